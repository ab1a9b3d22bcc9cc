"""Reads a topic back with librdkafka (the confluent-kafka wheel scripts/lib.sh installs), a
Kafka client independent of Weir's own producer: every partition from its first offset, until
COUNT records arrived or TIMEOUT seconds passed. Prints one JSON object per record:
{"partition", "offset", "key", "value"} (key and value as text)."""

import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition

bootstrap, topic, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "weir-e2e", "enable.auto.commit": False})
meta = c.list_topics(topic, timeout=timeout)
partitions = sorted(meta.topics[topic].partitions)
c.assign([TopicPartition(topic, p, 0) for p in partitions])
got = []
deadline = time.time() + timeout
while len(got) < count and time.time() < deadline:
    m = c.poll(0.2)
    if m is None:
        continue
    if m.error():
        print(json.dumps({"error": str(m.error())}), file=sys.stderr)
        continue
    key = m.key().decode() if m.key() is not None else None
    got.append({"partition": m.partition(), "offset": m.offset(), "key": key, "value": m.value().decode()})
c.close()
for r in sorted(got, key=lambda r: (r["partition"], r["offset"])):
    print(json.dumps(r))
