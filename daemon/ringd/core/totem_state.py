"""Totem protocol states and the reasons for entering them (shared by the core's modules)."""

from __future__ import annotations

import enum


class State(enum.Enum):
    """The four states of the paper and corosync ``memb_state``."""

    OPERATIONAL = 1
    GATHER = 2
    COMMIT = 3
    RECOVERY = 4


class Reason(enum.Enum):
    """Why a state was entered (corosync ``gather_state_from``); values are metric labels."""

    START = "start"
    TOKEN_LOSS = "token_loss"
    JOIN = "join"  # a Join we must take into account
    FOREIGN_RING = "foreign_ring"  # a message or merge detect of another ring
    PEER_DEAD = "peer_dead"
    PEER_ALIVE = "peer_alive"
    MERGE_DURING_JOIN = "merge_during_join"
    CONSENSUS_TIMEOUT = "consensus_timeout"
    FAILED_TO_RECEIVE = "failed_to_receive"
    COMMIT_TOKEN = "commit_token"
    COMMIT_DONE = "commit_done"
    RECOVERY_DONE = "recovery_done"
