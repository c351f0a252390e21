"""kombu's Redis transport, with one adaptation so that a worker survives a Redis restart.

Written against kombu 5.7.0 (with Celery 5.7.0 and redis-py 8.1.0); check it again on upgrade.

What goes wrong without it, when Redis dies under a consuming worker:

1. Celery's consumer cleans up the broken connection with ``Connection.collect()``, then
   ``Connection.close()`` (``celery/worker/consumer/consumer.py``,
   ``on_connection_error_after_connected``).
2. ``collect()`` closes the channels and then detaches the transport:
   ``_do_close_transport`` sets ``transport.client = None`` (``kombu/connection.py``).
   Closing a channel talks to Redis (it reads the pending BRPOP reply; the pidbox channel
   deletes its auto-delete queue), so with Redis gone each close raises a connection error.
   ``Transport.close_connection`` (``kombu/transport/virtual/base.py``) stops at the first
   such error, and ``collect()`` swallows it: the task channel is left open, its
   unacknowledged messages still in its QoS, on a transport whose client is now ``None``.
3. ``close()`` closes that channel again. The channel restores its unacknowledged messages
   (``virtual.QoS.restore_unacked_once`` → redis ``QoS.restore_unacked``), which builds a
   new connection pool from ``self.connection.client`` (``Channel._connparams``):
   ``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not a
   connection error, so neither ``kombu.common.ignore_errors`` nor the consumer's
   reconnect loop catches it, and the worker stops ("Unrecoverable error").

A worker with nothing unacknowledged never reaches the restore, which is why only a busy
worker died. The adaptation: a channel whose transport is gone raises a *connection* error
instead, which is what it is. Celery's clean-up then ignores it and reconnects. Nothing is
lost by not restoring there: a Redis that survived still holds those messages in its
``unacked`` hash and hands them out again after the visibility timeout; an empty one has
lost them whatever the worker does. Task threads that finish after the loss get the same
error on ``ack``, which kombu logs ("Couldn't ack") instead of breaking Celery's
bookkeeping with an AttributeError.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


#: For Celery's ``broker_transport``: the transport class by name, resolved by kombu.
TRANSPORT = f"{__name__}:Transport"
