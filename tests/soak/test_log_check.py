"""The soak's log check: kafka-python's report of a socket the killed broker dropped passes, any other
traceback fails the soak."""

from tests.soak.test_soak import unexpected_tracebacks

SOCKET_LOSS = """\
2026-12-05 19:00:53,362 ERROR kafka.net.transport: <KafkaTCPTransport [none]>: Error receiving network data
Traceback (most recent call last):
  File "/venv/kafka/net/transport.py", line 110, in _sock_recv
    data = self._sock.recv(4096)
ConnectionResetError: [Errno 104] Connection reset by peer
2026-12-05 19:00:53,363 ERROR kafka.net.transport: <KafkaTCPTransport [none]>: Abort
"""
OURS = """\
2026-12-05 19:00:54,000 ERROR analytics.consumer: batch failed
Traceback (most recent call last):
  File "analytics/consumer.py", line 1, in poll
ValueError: boom
"""
KAFKA_BUG = """\
2026-12-05 19:00:53,362 ERROR kafka.net.transport: <KafkaTCPTransport [none]>: Error receiving network data
Traceback (most recent call last):
  File "/venv/kafka/net/transport.py", line 120, in _sock_recv
KeyError: 3
"""


def test_socket_loss_reported_by_kafka_is_expected() -> None:
    assert unexpected_tracebacks(SOCKET_LOSS) == []


def test_our_traceback_is_reported_even_next_to_a_socket_loss() -> None:
    found = unexpected_tracebacks(SOCKET_LOSS + OURS)
    assert len(found) == 1 and "ValueError: boom" in found[0]


def test_kafka_traceback_that_is_not_a_socket_loss_is_reported() -> None:
    assert len(unexpected_tracebacks(KAFKA_BUG)) == 1


def test_traceback_before_the_first_record_is_reported() -> None:
    found = unexpected_tracebacks("Traceback (most recent call last):\nImportError: x\n" + SOCKET_LOSS)
    assert len(found) == 1 and "ImportError" in found[0]
