# The two front-door commands: `make demo` and `make test`. Both install what they need first.
.PHONY: demo test install bpf clean

install:
	scripts/setup.sh

demo: install
	scripts/demo.sh

test: install
	scripts/test.sh $(ARGS)

bpf: install
	.venv/bin/python -m bpf.build

clean:
	rm -rf .venv build *.egg-info
