"""Who is really in a group call: invitation chains, our signed roster, the group code.

:meth:`RosterState.vouched` decides which members an invitation chain links to
us (see :mod:`pqcall.client.group_call`); :meth:`RosterState.sign` builds and
signs our roster (``crypto.group_keys.Roster``: ourselves and the vouched joined
members with their handshake identities) and derives the group code;
:meth:`RosterState.check` compares the other members' signatures with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pqcall.crypto.group_keys import Roster, check_roster, group_code, sign_roster
from pqcall.crypto.identity import IdentityPrivateKey, IdentityPublicKey
from pqcall.exceptions import BadSignature, PqcallError
from pqcall.signaling.group_messages import INVITATION_CONTEXT, GroupView, invitation_data

IdentityLookup = Callable[[str], Awaitable[Any]]


class RosterState:
    """Our view of a group call's membership."""

    def __init__(self, our_name: str, identity: IdentityPrivateKey, call_id: str) -> None:
        self.our_name = our_name
        self._identity = identity
        self._call_id = call_id
        self.code: str | None = None  # the group code of our latest signed roster
        self.roster: Roster | None = None
        self.agreed: tuple[str, ...] = ()  # members whose signature confirmed our roster
        self._valid: dict[tuple[str, str, bytes], bool] = {}  # checked invitations
        self._mismatched: set[tuple[str, int]] = set()
        self.codes: list[dict[str, object]] = []  # each code shown: its members and code

    async def vouched(self, view: GroupView, identity_of: IdentityLookup) -> set[str]:
        """The names an invitation chain with valid signatures links to us."""
        vouched = {self.our_name}
        changed = True
        while changed:
            changed = False
            for member in view.members:
                inviter = member.invited_by
                if inviter is None or member.invitation is None:
                    continue
                if (member.name in vouched) == (inviter in vouched):
                    continue
                if await self._invitation_valid(
                    member.name, inviter, member.invitation, identity_of
                ):
                    vouched |= {member.name, inviter}
                    changed = True
        return vouched

    async def _invitation_valid(
        self, name: str, inviter: str, signature: bytes, identity_of: IdentityLookup
    ) -> bool:
        key = (name, inviter, signature)
        if key in self._valid:
            return self._valid[key]
        invitee_key = await self._public(name, identity_of)
        inviter_key = await self._public(inviter, identity_of)
        valid = False
        if invitee_key is not None and inviter_key is not None:
            data = invitation_data(self._call_id, name, invitee_key.fingerprint())
            try:
                inviter_key.verify(signature, data, context=INVITATION_CONTEXT)
                valid = True
            except BadSignature:
                valid = False
        if invitee_key is not None and inviter_key is not None:
            self._valid[key] = valid  # a lookup that failed is tried again later
        return valid

    async def _public(self, name: str, identity_of: IdentityLookup) -> IdentityPublicKey | None:
        if name == self.our_name:
            return self._identity.public_key()
        found = await identity_of(name)
        return found if isinstance(found, IdentityPublicKey) else None

    def sign(self, version: int, members: Mapping[str, IdentityPublicKey]) -> bytes | None:
        """Build our roster at ``version`` over ``members`` (and us), sign it, derive the code."""
        identities = dict(members)
        identities[self.our_name] = self._identity.public_key()
        try:
            roster = Roster.of(bytes.fromhex(self._call_id), version, identities)
        except PqcallError:
            return None
        self.roster = roster
        self.code = group_code(roster)
        if not self.codes or self.codes[-1]["code"] != self.code:
            self.codes.append({"members": list(roster.names), "code": self.code})
        return sign_roster(self._identity, roster)

    def check(
        self, identities: Mapping[str, IdentityPublicKey], signatures: Mapping[str, bytes]
    ) -> list[str]:
        """Members whose signature contradicts our roster (each told once per version)."""
        if self.roster is None:
            return []
        result = check_roster(
            self.roster, our_name=self.our_name, identities=identities, signatures=signatures
        )
        self.agreed = result.confirmed
        fresh = []
        for name in result.mismatched:
            if (name, self.roster.generation) not in self._mismatched:
                self._mismatched.add((name, self.roster.generation))
                fresh.append(name)
        return fresh
