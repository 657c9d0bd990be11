#!/usr/bin/env bash
# A virtual sound card for testing the real-device path without hardware.
#
# Starts a PulseAudio daemon with a null sink "vsink" whose monitor is the
# default source, so what is played to the ALSA/PortAudio device "pulse" can
# be recorded back from it. Prints the environment its clients need:
#
#   eval "$(bash scripts/virtual-soundcard.sh)"          # start (idempotent)
#   PQCALL_TEST_PULSE=1 .venv/bin/pytest tests/media/test_devices_pulse.py
#   bash scripts/virtual-soundcard.sh stop
#
# Installs libportaudio2, pulseaudio and the ALSA pulse plugin with apt-get
# when they are missing (needs root, as on CI). Logs go to stderr.
set -euo pipefail

RUNTIME_DIR="${PQCALL_PULSE_DIR:-/tmp/pqcall-pulse}"
export XDG_RUNTIME_DIR="$RUNTIME_DIR"
export PULSE_SERVER="unix:$RUNTIME_DIR/pulse/native"

log() { echo "virtual-soundcard: $*" >&2; }

if [[ "${1:-start}" == "stop" ]]; then
    pulseaudio --kill 2>/dev/null || true
    log "stopped"
    exit 0
fi

# install what is missing
missing=()
ldconfig -p | grep -q 'libportaudio\.so\.2' || missing+=(libportaudio2)
command -v pulseaudio >/dev/null || missing+=(pulseaudio)
command -v pactl >/dev/null || missing+=(pulseaudio-utils)
[[ -e /usr/share/alsa/alsa.conf.d/pulse.conf ]] || missing+=(libasound2-plugins)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q "${missing[@]}" >&2
fi

# start the daemon unless it already answers
mkdir -p "$RUNTIME_DIR"
chmod 700 "$RUNTIME_DIR"
if ! pactl info >/dev/null 2>&1; then
    # as root PulseAudio warns that it is meant for a user session; it works
    pulseaudio -D --exit-idle-time=-1 -n \
        --load=module-native-protocol-unix \
        --load="module-null-sink sink_name=vsink rate=48000 channels=1" \
        --log-target=stderr 2>/dev/null
    for _ in $(seq 50); do
        pactl info >/dev/null 2>&1 && break
        sleep 0.1
    done
fi
pactl info >/dev/null || { log "PulseAudio did not start"; exit 1; }
pactl set-default-sink vsink
pactl set-default-source vsink.monitor
log "PulseAudio up: null sink vsink, default source vsink.monitor"

echo "export XDG_RUNTIME_DIR=$RUNTIME_DIR"
echo "export PULSE_SERVER=$PULSE_SERVER"
