# remusdb: `make demo` runs the main job, `make test` runs the tests. Both install what they need.
.PHONY: deps image demo test test-unit lint install clean

deps:
	@sh scripts/install-deps.sh

image: deps
	@.venv/bin/remusdb image build
	@.venv/bin/remusdb qemu build --if-needed

demo: image
	.venv/bin/remusdb demo

test: image
	.venv/bin/pytest -q -ra

test-unit: deps
	.venv/bin/pytest -q -m "not vm"

lint: deps
	.venv/bin/ruff check .
	.venv/bin/mypy

install: deps
	@sh scripts/install-units.sh

clean:
	rm -rf .venv *.egg-info .pytest_cache
