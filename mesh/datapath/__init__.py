"""Kernel datapath adapter (eBPF): socket load balancing, identity policy, events, pinning."""

from mesh.datapath.datapath import Datapath, DatapathConfig, StartReport

__all__ = ["Datapath", "DatapathConfig", "StartReport"]
