"""pask-ipvs: a declarative L4 load-balancer control plane for Linux (IPVS + nftables)."""

__version__ = "0.1.0"
