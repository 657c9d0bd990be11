"""What a person types during a call in the terminal: mute, switch devices, hang up.

``pqcall call`` and ``pqcall listen`` read one command a line from stdin
while a call is active (Enter after each)::

    m            mute, or unmute when muted (the peer is told)
    in SPEC      take our audio from SPEC from now on (the --audio-in syntax)
    out SPEC     play the peer's audio to SPEC from now on (the --audio-out syntax)
    h            hang up

Anything else prints the list. A device that cannot be opened prints one
line and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pqcall.exceptions import DeviceError

if TYPE_CHECKING:
    from pqcall.cli.output import Console
    from pqcall.client.call import Call

HELP: Final = (
    "during the call type m (mute/unmute), in DEVICE, out DEVICE or h (hang up), then Enter"
)
MUTE: Final = frozenset({"m", "mute", "unmute"})
HANG_UP: Final = frozenset({"h", "hangup", "hang-up", "q", "quit"})


async def run_command(call: Call, console: Console, line: str) -> bool:
    """Carry out one typed line; returns whether it hung up."""
    word, _, rest = line.strip().partition(" ")
    word, spec = word.lower(), rest.strip()
    if not word:
        return False
    if word in MUTE and not spec:
        call.set_muted(not call.is_muted)
        console.say("muted: the peer hears silence" if call.is_muted else "unmuted")
        return False
    if word in HANG_UP and not spec:
        console.say("hanging up…")
        await call.hangup()
        return True
    if word in ("in", "out") and spec:
        try:
            if word == "in":
                await call.set_audio(audio_in=spec)
            else:
                await call.set_audio(audio_out=spec)
        except DeviceError as exc:
            console.say(f"{exc}; still using the same device")
            return False
        console.say(f"{'microphone' if word == 'in' else 'speaker'} is now {spec}")
        return False
    console.say(HELP)
    return False
