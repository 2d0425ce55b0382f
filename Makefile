# The README's two commands: `make demo` and `make test`. Both install first.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .install.stamp

.PHONY: install demo test lint format bench accuracy video clean

$(STAMP): pyproject.toml
	$(PIP) install -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	losa-cache demo --out demo_out

# One thread per test process: tiny models run faster without OpenMP contention. Two
# worker processes (pytest-xdist, one per core of a 2-core CI machine), each taking whole
# files (--dist loadfile: a module's fixtures are built once). TEST_WORKERS=0 runs in one
# process. No test collected is still exit 5, a failure.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

bench: install
	$(PYTHON) benchmarks/extract.py
	$(PYTHON) benchmarks/train.py

# Table 1 at small scale: LoSA vs linear vs full/LoRA/BitFit on real data (~15 min on CPU).
# One thread: on a shared 2-core box OpenMP oversubscription made training ~10x slower.
accuracy: install
	OMP_NUM_THREADS=1 $(PYTHON) -m losa_cache.pipelines.accuracy --out runs/accuracy

# Video: linear vs LoSA without / with Eq. 6's temporal mixer on generated motion clips
# (CIFAR-10 objects moving 4 ways, direction = label; ~10 min on CPU, numbers as they come).
video: install
	OMP_NUM_THREADS=1 $(PYTHON) -m losa_cache.pipelines.video --out runs/video

clean:
	rm -rf demo_out $(STAMP) .pytest_cache .ruff_cache
