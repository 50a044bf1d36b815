"""eBPF C sources, the libbpf loader and the map codecs."""
