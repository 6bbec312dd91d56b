"""Who may do what: roles from the registry and from VOMS FQANs, actions checked with a
message that says what was missing."""

from __future__ import annotations

import pytest

from b2cal.auth.identity import Identity
from b2cal.auth.policy import Action, Grant, Role, allowed, check, grants_of
from b2cal.errors import NotAllowed

pytestmark = pytest.mark.unit

ADA = Identity("/DC=org/CN=Ada", ("/belle/Role=calibration/Capability=NULL", "/belle"), "proxy")
FQANS = {
    "/belle": Grant(Role.VIEWER),
    "/belle/Role=calibration": Grant(Role.EXPERT),
    "/belle/Role=coordinator": Grant(Role.COORDINATOR),
}
T0_EXPERT = Grant(Role.EXPERT, frozenset({"ChannelT0"}))


def test_grants_come_from_the_registry_and_the_fqans() -> None:
    assert grants_of(ADA, [T0_EXPERT], FQANS) == [T0_EXPERT, Grant(Role.EXPERT), Grant(Role.VIEWER)]
    plain = Identity("/DC=org/CN=Bob")
    assert grants_of(plain, [], FQANS) == []
    assert grants_of(Identity("/CN=X", ("/belle/Role=NULL/Capability=NULL",)), [], FQANS) == [
        Grant(Role.VIEWER)
    ]


def test_experts_act_on_their_calibrations_and_only_the_coordinator_promotes() -> None:
    assert allowed([T0_EXPERT], Action.SIGNOFF, "ChannelT0")
    assert not allowed([T0_EXPERT], Action.SIGNOFF, "BeamSpot")
    assert allowed([Grant(Role.EXPERT)], Action.SIGNOFF, "BeamSpot")  # of every calibration
    assert not allowed([Grant(Role.EXPERT)], Action.PROMOTE)
    assert allowed([Grant(Role.COORDINATOR)], Action.PROMOTE)
    assert not allowed([Grant(Role.ADMIN)], Action.SIGNOFF, "ChannelT0")
    assert allowed([Grant(Role.ADMIN)], Action.MANAGE_USERS)
    assert allowed([Grant(Role.VIEWER)], Action.VIEW)
    assert not allowed([Grant(Role.VIEWER)], Action.SUBMIT_REQUEST)
    assert not allowed([T0_EXPERT], Action.SKIP, "ChannelT0")  # the coordinator's choice


def test_a_refusal_says_who_what_and_what_was_needed() -> None:
    bob = Identity("/DC=org/CN=Bob")
    with pytest.raises(NotAllowed) as refused:
        check(bob, [T0_EXPERT], Action.SIGNOFF, "calibration run 7", "BeamSpot")
    assert str(refused.value) == (
        "/DC=org/CN=Bob (expert of ChannelT0) may not sign off calibration run 7: it needs "
        "coordinator or expert of BeamSpot"
    )
    with pytest.raises(NotAllowed, match="no role"):
        check(bob, [], Action.VIEW, "the dashboard")
    check(bob, [Grant(Role.COORDINATOR)], Action.PROMOTE, "staging-prompt-3")
