"""Real-time calls at 10 % bursty loss: pqcall with and without its backup mode, and the prototype.

``python -m pqcall.bench.bursts_calls``: the media benchmark's harness
(:mod:`pqcall.bench.media`) at its "10% bursty loss" condition, three seeds,
the two ``--quick`` voices at full length; per variant the worst run, the
worst voice (mean of its runs), the mean, the callee's concealed ms, the time
share of the backup mode and the wire bitrate. All variants run in the same
run, so a loaded machine weighs on them alike (decision 0220).
"""

from __future__ import annotations

import statistics
import sys

from pqcall.bench import media
from pqcall.bench.call import Scenario
from pqcall.bench.speech import call_pairs, select_speech
from pqcall.transport.media_config import DEFAULT_BACKUP_BYTES
from pqcall.transport.session import MediaSettings

__all__ = ["main"]


def main() -> int:
    """Run the calls and print one summary line per variant, then one line per call."""
    _, bursty = media.CONDITIONS[4]
    pairs = call_pairs(select_speech(True, quick=True))
    jobs: list[media.Job] = []
    for repeat in range(media.REPEATS):
        impairment = media.repeat_seed(bursty, repeat)
        for caller, reply in pairs:
            seconds = caller.seconds
            fec_only = MediaSettings(backup_bytes=0)
            backup = MediaSettings(backup_bytes=DEFAULT_BACKUP_BYTES)
            jobs += [
                ("pqcall", Scenario("backup", impairment, seconds, backup), caller, reply),
                ("pqcall", Scenario("fec only", impairment, seconds, fec_only), caller, reply),
                ("prototype", Scenario("prototype", impairment, speech_s=seconds), caller, reply),
            ]
    print(f"{len(jobs)} calls in real time...", file=sys.stderr, flush=True)
    records = media._run_all(jobs)
    rows: dict[str, list[tuple[str, float, float, float, float]]] = {}
    for (_, scenario, caller, _), record in zip(jobs, records, strict=True):
        pesq = media._score(record, caller.speech).pesq
        row = (caller.name, pesq, record.concealed_ms[1], record.mode_share("backup"), record.kbps)
        rows.setdefault(scenario.name, []).append(row)
    for name, calls in rows.items():
        voices: dict[str, list[float]] = {}
        for voice, pesq, *_ in calls:
            voices.setdefault(voice, []).append(pesq)
        print(
            f"{name:10s} worst run {min(c[1] for c in calls):.2f}"
            f"  worst voice {min(statistics.fmean(v) for v in voices.values()):.2f}"
            f"  mean {statistics.fmean(c[1] for c in calls):.2f}"
            f"  callee concealed ms {statistics.fmean(c[2] for c in calls):.0f}"
            f"  backup share {statistics.fmean(c[3] for c in calls):.2f}"
            f"  kbit/s {statistics.fmean(c[4] for c in calls):.1f}"
        )
        for voice, pesq, concealed, share, kbps in calls:
            print(f"    {voice:16s} {pesq:.2f}  {concealed:.0f} ms  {share:.2f}  {kbps:.1f}")
    return 0


if __name__ == "__main__":  # spawned workers import this module: run only as a script
    sys.exit(main())
