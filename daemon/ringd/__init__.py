"""ringd: SWIM/Lifeguard gossip membership and Totem ordered delivery in one Trio daemon."""

__version__ = "0.1.0"
