# MedMoE Book. Two commands on a fresh machine (Python 3.11, no GPU, package registries only):
#   make book   -- set up .venv, run every chapter notebook (quick profile) with papermill, build the HTML book
#   make test   -- set up .venv, lint (ruff), unit tests + every docstring example, nbval over every notebook (smoke),
#                  and every chapter's rehearsal (the paper profile's path end to end on tiny real-format fixtures)
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.medmoe-installed
# The chapters are discovered from the paper folders' cards (medmoe/papers/<name>/card.yaml): adding a paper
# adds its notebook here without editing this file.
NOTEBOOKS = $(shell $(BIN)/medmoe chapters --paths)
REHEARSED = $(shell $(BIN)/medmoe chapters --paths --with-profile rehearsal)
# Chapters without a paper: they read the paper chapters' runs and train nothing, so they run after them
# (profiles in notebooks/profiles.yaml).
SYNTHESES = notebooks/05_comparison.py
# What they read: a chapter that re-ran makes them re-run too (medmoe run --depends-on, with --skip-unchanged).
CHAPTER_RECORDS = $(foreach nb,$(NOTEBOOKS),--depends-on runs/$(PROFILE)/$(basename $(notdir $(nb)))/metrics.json)
REHEARSAL_SECONDS ?= 60
PROFILE  ?= quick
# A chapter whose inputs (notebook, profile parameters, medmoe sources, requirements.txt) match the inputs.sha256 of
# its last successful run is not executed again; FORCE=1 re-executes every chapter.
SKIP_UNCHANGED = $(if $(FORCE),,--skip-unchanged)

.PHONY: book test install notebooks lint unit nbval rehearsal gpu-wheels sync clean help
help:
	@echo "make book | make test | make rehearsal | make notebooks PROFILE=quick | make sync | make clean"

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Execute every chapter notebook with PROFILE through the runner; copy the executed notebooks into the book.
notebooks: $(STAMP)
	@mkdir -p book/chapters
	@test -n "$(NOTEBOOKS)" || { echo "no chapter notebooks found (medmoe chapters --paths)"; exit 1; }
	@set -e; for nb in $(NOTEBOOKS) $(SYNTHESES); do \
	  stem=$$(basename $$nb .py); \
	  case " $(SYNTHESES) " in *" $$nb "*) deps="$(CHAPTER_RECORDS)";; *) deps="";; esac; \
	  echo "== medmoe run $$nb --profile $(PROFILE)"; \
	  $(BIN)/medmoe run $$nb --profile $(PROFILE) --out runs/$(PROFILE)/$$stem $(SKIP_UNCHANGED) $$deps; \
	  cp runs/$(PROFILE)/$$stem/notebook.ipynb book/chapters/$$stem.ipynb; \
	done

# MathJax is served from the book itself (from the pinned django-static-mathjax wheel), so equations
# render without a CDN, offline too.
MATHJAX := book/_vendor/mathjax/tex-chtml.js
$(MATHJAX): $(STAMP)
	rm -rf book/_vendor/mathjax && mkdir -p book/_vendor
	cp -r "$$($(BIN)/python -c 'import mathjax, pathlib; print(pathlib.Path(mathjax.__file__).parent / "static/mathjax/es5")')" book/_vendor/mathjax

book: notebooks $(MATHJAX)
	$(BIN)/medmoe report --runs runs --out-dir book/chapters
	$(BIN)/jupyter-book build book --builder html -W -n --keep-going
	@echo "book: open book/_build/html/index.html"

# One linter, pinned in requirements.txt, configured in pyproject.toml ([tool.ruff]: line length 120).
lint: $(STAMP)
	$(BIN)/ruff check medmoe tests data_scripts notebooks

# Unit tests plus every docstring example in the package (--doctest-modules, set in pyproject.toml).
unit: $(STAMP)
	$(BIN)/python -m pytest tests medmoe -q

nbval: $(STAMP)
	rm -rf build/nbval
	$(BIN)/medmoe prepare $(NOTEBOOKS) $(SYNTHESES) --profile smoke --out-dir build/nbval
	$(BIN)/python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider build/nbval -q

# The paper path of every chapter, end to end (loaders, weight loading, evaluation protocol, figure and registry
# cells) on tiny fixtures in the real formats, each within REHEARSAL_SECONDS; runs/rehearsal/<stem>/ keeps the record.
rehearsal: $(STAMP)
	@test -n "$(REHEARSED)" || { echo "no chapter has a rehearsal profile"; exit 1; }
	@set -e; for nb in $(REHEARSED); do \
	  stem=$$(basename $$nb .py); \
	  echo "== medmoe run $$nb --profile rehearsal"; \
	  $(BIN)/medmoe run $$nb --profile rehearsal --out runs/rehearsal/$$stem --max-seconds $(REHEARSAL_SECONDS); \
	done

test: lint unit nbval rehearsal

# The three pure-Python wheels a bare GPU image (Python 3.12, torch, transformers, accelerate) lacks, for the GPU
# check in medmoe/benchmarks/paper_steps.py (carry .whl to the machine; it reaches no package index).
gpu-wheels: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
	  monai==1.6.1 segment-anything==1.0 nibabel==5.4.2

# Keep each notebooks/NN_name.py and its paired .ipynb in step (the .ipynb is committed without outputs), and
# regenerate their Colab badges and install cells from book/_config.yml's repository block (medmoe sync-links).
sync: $(STAMP)
	$(BIN)/jupytext --sync $(NOTEBOOKS) $(SYNTHESES)
	$(BIN)/medmoe sync-links
	$(BIN)/jupyter nbconvert --clear-output --inplace $(NOTEBOOKS:.py=.ipynb) $(SYNTHESES:.py=.ipynb)

clean:
	rm -rf book/_build book/chapters build runs
