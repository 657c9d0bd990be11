"""Media: audio in and out, the codec, playout timing and call statistics.

Modules, in the order audio flows on the receive side::

    codec.py     Opus behind a small encoder/decoder interface
    jitter.py    the adaptive jitter buffer: packets and ``now`` in, one
                 playout decision per frame out (pure, sans-I/O)
    delay.py     its estimate of the buffering the network needs (pure)
    playout.py   the decisions, arrivals and counters it hands out (pure)
    stats.py     call statistics as RTCP reports them, and a MOS (pure)
    emodel.py    the ITU-T G.107 E-model behind that MOS (pure)
    audio.py, devices.py   sources and sinks: files, tones, sound devices
    audio_spec.py          the CLI spec (tone:440, a WAV path, a device) opened

The pure modules import no clock, socket, randomness or event loop: the
media session feeds them and acts on what they return.
"""
