"""Group call benchmark: phones in one process, a real ``pqcall server`` child process.

For each size (2, 4 and 8 phones; ``--quick``: 2 and 4) a fresh server
(:class:`~pqcall.bench.server_process.ServerProcess`, SQLite) and that many
accounts (the test KDF, so registering is quick) are made; the phones run in
this process (one interpreter, one core at most: say so with the figures),
each sending a different tone through the real pipeline (Opus, SFrame under
its sender key, the server's forwarder) to a null sink. The first phone
invites the others; everyone answers at once. Measured:

- the time from the invite to the moment every phone holds every other's key
  (handshakes, sealed keys, rekeys on each join, all through the server),
  against the same for two phones;
- the download per phone (the sum of the others' streams as received)
  against (n - 1) x the upload of one phone;
- the frames each phone sent per second against 50 (fewer: the process did
  not get the CPU to keep its 20 ms tick, as on a loaded machine);
- the packets the server forwarded per second (counted at the receivers)
  against n (n - 1) x 50 (every member sends 50 frames a second);
- CPU per phone (this process's CPU over the window, divided by n) and the
  server's CPU (its /proc counter), against one phone of a 2-phone call.

Then, per size, :mod:`pqcall.bench.group_quality` (another call, each phone in a
process of its own): PESQ-WB of one talker as each listener hears it against the codec
alone, the mix's peak and clipped samples when everyone talks at once, and the
time from accepting an invite to the first audio against a 1:1 call's; and once,
:mod:`pqcall.bench.group_forwarder`: the server's group forwarder saturated on
one core against a bare asyncio fan-out, in packets/s and packets/s per core.

Everything runs on the machine the benchmark is given; on a shared machine the
figures carry its load (say so with them). 16 phones in one process would not
keep their 20 ms tick even on an idle 2-core machine: not in the sizes (nor 16
processes: 2 cores shared with others do not carry them).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from pqcall.bench import group_forwarder, group_quality
from pqcall.bench.group_quality import SPEECH_S, TAIL_S
from pqcall.bench.report import Figure
from pqcall.bench.server_process import ServerProcess, say
from pqcall.client.group_call import GroupCall
from pqcall.client.home import Home
from pqcall.client.media_options import MediaOptions
from pqcall.client.phone import Phone, register
from pqcall.crypto.keystore import INSECURE_TEST_KDF_PARAMS

SIZES_FULL = (2, 4, 8)
SIZES_QUICK = (2, 4)
WINDOW_S_FULL = 10.0
WINDOW_S_QUICK = 4.0
KEYS_TIMEOUT_S = 120.0
FRAMES_PER_S = 50
PASSPHRASE = "bench group passphrase"


def run(quick: bool = False) -> list[Figure]:
    """Measure every size; figures against the 2-phone call or the arithmetic expectation."""
    sizes = SIZES_QUICK if quick else SIZES_FULL
    window = WINDOW_S_QUICK if quick else WINDOW_S_FULL
    results = {n: asyncio.run(_measure(n, window)) for n in sizes}
    two = results[sizes[0]]
    figures = list(group_forwarder.run(quick))
    for n in sizes:
        figures += quality_figures(group_quality.measure(n))
    for n, result in results.items():
        figures += [
            Figure(f"{n} phones: invite to all keys held", result["keys_s"], "s",
                   "2 phones", two["keys_s"]),
            Figure(f"{n} phones: download per phone", result["rx_kbps"], "kbit/s",
                   f"{n - 1} x one phone's upload", (n - 1) * result["tx_kbps"]),
            Figure(f"{n} phones: frames sent per phone", result["sent_pps"], "packets/s",
                   "one every 20 ms", FRAMES_PER_S),
            Figure(f"{n} phones: packets forwarded", result["forwarded_pps"], "packets/s",
                   f"{n}x{n - 1}x{FRAMES_PER_S}", n * (n - 1) * FRAMES_PER_S),
            Figure(f"{n} phones: CPU per phone (in one process)", result["cpu_per_phone"],
                   "cores", "a phone of 2", two["cpu_per_phone"]),
            Figure(f"{n} phones: server CPU", result["server_cpu"], "cores",
                   "server with 2 phones", two["server_cpu"]),
        ]  # fmt: skip
    return figures


def quality_figures(heard: group_quality.Heard) -> list[Figure]:
    """What the listeners of one call heard, against the codec alone and a 1:1 call."""
    n = heard.size
    codec = "the same speech through Opus alone (no network)"
    mixes = sum(heard.together_samples)
    return [
        Figure(f"{n} phones: PESQ-WB of one talker ({heard.talker}), worst listener",
               min(heard.pesq), "MOS", codec, heard.codec_pesq),
        Figure(f"{n} phones: PESQ-WB of one talker, mean over {n - 1} listeners",
               sum(heard.pesq) / len(heard.pesq), "MOS", codec, heard.codec_pesq),
        Figure(f"{n} phones: PESQ-WB of one talker, worst listener, against a 1:1 call",
               min(heard.pesq), "MOS", "the callee of a 1:1 call (same speech, same run)",
               heard.one_to_one_pesq),
        Figure(f"{n} phones: accept to first audio, slowest invitee",
               max(heard.accept_to_audio_s), "s", "a 1:1 call, accept to first audio",
               heard.one_to_one_accept_to_audio_s),
        Figure(f"{n} phones: all talk at once, peak of the loudest mix",
               10 ** (max(heard.together_peak_dbfs) / 20), "of full scale",
               "the loudest voice alone", 10 ** (heard.loudest_voice_peak_dbfs / 20)),
        Figure(f"{n} phones: the talker's audio concealed, worst listener",
               max(heard.concealed_ms), "ms", "the speech's length", 1000 * SPEECH_S),
        Figure(f"{n} phones: the talker's packets lost, worst listener", max(heard.lost),
               "packets", "packets of the speech", FRAMES_PER_S * SPEECH_S),
        Figure(f"{n} phones: frames the talker sent", heard.talker_sent_per_s, "packets/s",
               "one every 20 ms", FRAMES_PER_S),
        Figure(f"{n} phones: dropped by the kernel at the listeners' sockets",
               sum(heard.socket_drops), "datagrams", "datagrams sent to them",
               (n - 1) ** 2 * FRAMES_PER_S * (SPEECH_S + TAIL_S)),
        Figure(f"{n} phones: dropped by the kernel at the forwarder's socket",
               heard.forwarder_drops, "datagrams", "datagrams sent to it",
               n * FRAMES_PER_S * (SPEECH_S + TAIL_S)),
        Figure(f"{n} phones: all talk at once, clipped samples (all listeners)",
               sum(heard.together_clipped), "samples", "samples in the mixes", mixes),
    ]  # fmt: skip


async def _measure(n: int, window_s: float) -> dict[str, float]:
    names = [f"member{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        with ServerProcess.start(base, None) as server:
            phones = []
            for index, name in enumerate(names):
                home = Home(base / name)
                await register(
                    home, name, server.base_url, PASSPHRASE, kdf_params=INSECURE_TEST_KDF_PARAMS
                )
                media = MediaOptions(audio_in=f"tone:{300 + 97 * index}", audio_out="null")
                phone = Phone(home, passphrase=PASSPHRASE, media=media, auto_answer=True)
                await phone.start()
                await phone.wait_connected(30.0)
                phones.append(phone)
            try:
                return await _call(phones, server, window_s)
            finally:
                for phone in phones:
                    await phone.close()


async def _call(phones: list[Phone], server: ServerProcess, window_s: float) -> dict[str, float]:
    n = len(phones)
    started = time.monotonic()
    calls = [await phones[0].group_call([p.username for p in phones[1:]])]
    for phone in phones[1:]:
        calls.append(await asyncio.wait_for(phone.next_group_invite(), 30.0))
    while not all(len(call.joined_names()) == n - 1 for call in calls):
        if time.monotonic() - started > KEYS_TIMEOUT_S:
            raise RuntimeError(f"{n} phones: not every key arrived in {KEYS_TIMEOUT_S:g} s")
        await asyncio.sleep(0.05)
    keys_s = time.monotonic() - started
    await asyncio.sleep(1.0)  # key switches settle
    sent0 = sum(call.media.packets_sent for call in calls if call.media is not None)
    received0, cpu0, server0 = _received(calls), time.process_time(), server.cpu_seconds()
    wall0 = time.monotonic()
    await asyncio.sleep(window_s)
    elapsed = time.monotonic() - wall0
    received1, cpu1, server1 = _received(calls), time.process_time(), server.cpu_seconds()
    sent1 = sum(call.media.packets_sent for call in calls if call.media is not None)
    rx, tx = _rates(calls)
    for call in calls:
        await call.leave()
    result = {
        "keys_s": keys_s,
        "rx_kbps": rx,
        "tx_kbps": tx,
        "forwarded_pps": (received1 - received0) / elapsed,
        "sent_pps": (sent1 - sent0) / elapsed / n,
        "cpu_per_phone": (cpu1 - cpu0) / elapsed / n,
        "server_cpu": (server1 - server0) / elapsed,
    }
    say(f"{n} phones: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()))
    return result


def _received(calls: list[GroupCall]) -> int:
    total = 0
    for call in calls:
        if call.media is None:
            continue
        for sender in call.media.senders:
            stats = call.media.stats(sender)
            total += 0 if stats is None else stats.packets_received
    return total


def _rates(calls: list[GroupCall]) -> tuple[float, float]:
    """Mean download per phone (kbit/s, all streams) and mean upload of one phone."""
    downloads: list[float] = []
    uploads: list[float] = []
    for call in calls:
        if call.media is None:
            continue
        snapshots = [call.media.stats(sender) for sender in call.media.senders]
        present = [s for s in snapshots if s is not None]
        downloads.append(sum(s.rx_kbps for s in present))
        uploads.extend(s.tx_kbps for s in present[:1])
    return sum(downloads) / len(downloads), sum(uploads) / max(len(uploads), 1)
