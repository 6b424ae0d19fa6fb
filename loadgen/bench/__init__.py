"""Benchmarks: how fast the engines and the service are on this machine, side by side in one run.

* :mod:`loadgen.bench.engine_speed` (``make bench``): pairs/s of every engine against
  sentence-transformers' ``CrossEncoder.predict``, in one process, no Kafka.
* :mod:`loadgen.bench.gpu`: the one-shot CUDA benchmark (fp16/bf16 fidelity and pairs/s).
* :mod:`loadgen.bench.loadtest` (``make loadtest``): the planning table through Kafka.
* :mod:`loadgen.bench.soak` (``make soak``): steady load for minutes, drift and memory growth.
* :mod:`loadgen.bench.scaleout`: replicas × threads through Kafka on one machine, with the
  broker's, the load generator's and the workers' CPU beside each run.
* :mod:`loadgen.bench.plan` (``python -m loadgen.plan``) and :mod:`loadgen.bench.queueing`: the
  capacity plan for a given load, from the scale-out report and a simulation of windows on
  replicas; ``--validate`` puts its predictions beside the measured runs.

Each writes its report through :mod:`loadgen.bench.report` (the command line, the JSON and Markdown
files, Markdown tables) and describes the machine with :mod:`loadgen.bench.machine`.
"""
