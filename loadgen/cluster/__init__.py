"""A cluster on this machine, and the faults to inject into it, for the demo, the benchmarks and the tests.

* :mod:`loadgen.cluster.local_kafka`: a real broker (``KAFKA_BOOTSTRAP_SERVERS``, testcontainers,
  or the Apache Kafka jars from Maven Central started by ``deploy/kafka/kafka.sh``).
* :mod:`loadgen.cluster.multi_broker`: a local N-node KRaft cluster (``KAFKA_BROKERS=N``) whose
  nodes can be SIGKILLed, stopped and restarted, and who leads which partition.
* :mod:`loadgen.cluster.workers`: worker processes, exactly what ``make worker`` runs.
* :mod:`loadgen.cluster.faults`: a broker that restarts with its data, acknowledgements cut on the
  wire, topic configs flipped, and a steady load that tallies sent, answered and lost.

Nothing here mocks Kafka.
"""
