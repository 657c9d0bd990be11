"""The backup mode end to end, in virtual time: bursts reported, copies sent, bursts repaired.

Two media engines over an in-memory link (``tests/media/test_pipeline.py``'s
``VirtualCall``) lose three datagrams in a row every half second; the
receiver's reports carry the bursts, the sender adds low-rate copies of the
three previous frames to each packet (one constant size for the mode), and
the receiver plays the lost frames from them (decision 0220).
"""

from pqcall.transport.adaptation import BACKUP_COPIES, EncoderMode
from pqcall.transport.audio_framer import backup_packet_bytes
from pqcall.transport.media_config import DEFAULT_BACKUP_BYTES
from pqcall.transport.media_engine import MediaSettings
from tests.media.test_pipeline import VirtualCall
from tests.utils import DatagramPair


def bursts_of_three(index: int) -> bool:
    """Datagrams 50 on: three lost in a row out of every 25."""
    return index >= 50 and index % 25 < 3


BACKUP_ON = MediaSettings(backup_bytes=DEFAULT_BACKUP_BYTES)


def test_bursts_switch_the_sender_to_backup_copies_that_repair_them():
    call = VirtualCall(BACKUP_ON, BACKUP_ON, link=DatagramPair(a_to_b_loss=bursts_of_three))
    call.run(3.0)
    adaptation = call.a.engine.adaptation
    assert adaptation.mode is EncoderMode.BACKUP
    assert adaptation.backup_copies == BACKUP_COPIES
    before = call.b.engine.jitter_stats
    call.run(3.0)
    after = call.b.engine.jitter_stats
    repaired = after.redundancy_recovered - before.redundancy_recovered
    concealed = after.concealed - before.concealed
    assert repaired >= 18  # six bursts of three in 3 s (and a few frames late)
    assert concealed == 0
    # one size for the mode's audio (past the SFrame counter's growth at 256)
    size = backup_packet_bytes(adaptation)
    assert size == 3 * 106  # three copies of 67 bytes fill three padding multiples
    sizes = {len(d) for d in call.link.a_to_b[-40:]}  # audio, and a control datagram
    assert len({n for n in sizes if n > size}) == 1


def test_random_loss_keeps_fec():
    call = VirtualCall(
        BACKUP_ON, BACKUP_ON, link=DatagramPair(a_to_b_loss=lambda i: i >= 50 and i % 10 == 0)
    )
    call.run(4.0)
    assert call.a.engine.adaptation.mode is EncoderMode.FEC


def test_no_backup_mode_by_default():
    call = VirtualCall(link=DatagramPair(a_to_b_loss=bursts_of_three))
    call.run(3.0)
    assert call.a.engine.adaptation.mode is EncoderMode.FEC
