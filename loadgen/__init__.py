"""Clients of the rerank service, and the tools that measure it from the outside.

One job: load the service the way users do and measure what they get. Three places:

* ``loadgen`` itself: the client and load generation. :mod:`loadgen.client` (``RerankClient``:
  produce requests, match answers by ``request_id``), :mod:`loadgen.run` (open- and closed-loop
  load, latency, its breakdown and loss), ``python -m loadgen`` (its command line), ``make demo``
  (:mod:`loadgen.demo`) and :mod:`loadgen.plain_consumer` (a plain per-message reader in its own
  process that checks loadgen's timing). They speak only Kafka.
* :mod:`loadgen.bench`: benchmarks. The engine speed benchmark (in process, no Kafka), the GPU
  benchmark, the planning load test and the soak (through Kafka).
* :mod:`loadgen.cluster`: a local cluster and its faults. The local Apache Kafka, worker processes
  of this machine, and fault injection (broker restarts, cut acknowledgements).

The texts come from the engine layer's corpus (:mod:`engines.corpus`). Nothing in ``schemas``,
``engines``, ``streams`` or ``evaluation`` imports this package.
"""
