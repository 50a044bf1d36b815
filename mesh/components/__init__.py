"""Agent-side adapters: each wires one subsystem (identity, policy, datapath, Envoy) into the agent."""
