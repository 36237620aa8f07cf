"""Circuit breakers counted across the workers of `--concurrency N`: thresholds are per cluster.

Envoy keeps one ResourceManager per cluster (and priority) whose counters every worker thread
moves: max_connections 1 admits one connection in the whole proxy, not one per worker, and
the circuit_breakers.* gauges (the open flags, remaining_*) are the process's. Tulle's workers
are processes, so their counters live in one shared memory segment (BreakerCounters.allocate:
an anonymous MAP_SHARED mapping the parent makes before it forks the workers).

Rules:
- A cell is one worker's count of one resource (connections, pending requests, requests,
  retries in flight, connection pools) of one cluster generation. Only its worker writes a
  cell, so there is no lock and no atomic read-modify-write: a worker keeps its count in the
  breaker and stores it whole into its cell (an aligned 8-byte word) after each change.
- To take a resource, a worker adds the other workers' cells to its own count and compares
  the sum with the threshold. Envoy's own test is a read and then an increment too, not one
  atomic step, so two workers taking the last unit at the same instant may both get it, as
  two Envoy threads may; here the window is the few hundred nanoseconds between a worker's
  read and its write. Releasing never reads.
- Every worker numbers its clusters alike, so they agree on the cells without talking: a
  cluster generation is each Cluster object made, the static ones in bootstrap order, then
  each one CDS adds or replaces, in the order of the updates, which every follower applies in
  the leader's order (proxy/worker_link.py). A replaced cluster's generation keeps its cells
  (its requests in flight finish on them) and the new one starts at zero, as Envoy's new
  cluster gets a new ResourceManager. The segment holds GENERATIONS generations, reused
  round-robin, each worker zeroing its own cells of a generation it starts: a generation's
  cells are reused only after GENERATIONS later ones, when its requests are long done.
- The gauges every worker computes are the proxy's (the sums), so /stats shows the leader's
  (proxy/stats.py, SAME_IN_EVERY_WORKER), while the overflow counters add up as counters do.

Cost: a take reads N - 1 cells and writes one, a release writes one; with two workers a
request's take and release of max_requests cost about 70 ns more than a worker's own count.
"""

from __future__ import annotations

import mmap

from proxy.upstream.circuit_breaker import CircuitBreaker, CircuitBreakerThresholds, retry_limit

GENERATIONS = 8192
RESOURCES = 5   # connections, pending requests, requests, retries, connection pools
_CX, _PENDING, _RQ, _RETRY, _POOLS = range(RESOURCES)
_CELL = 8


class BreakerCounters:
    """One worker's view of the shared cells: it hands out a breaker per cluster generation."""

    def __init__(self, memory: mmap.mmap | bytearray, workers: int, worker: int) -> None:
        """`memory`: from `allocate(workers)` (a bytearray stands in for tests); `worker`:
        this worker's number, 0 .. workers - 1."""
        if len(memory) < self.size(workers):
            raise ValueError(f"{len(memory)} bytes cannot hold the counters of {workers} workers")
        self._cells = memoryview(memory).cast("q")
        self.workers = workers
        self.worker = worker
        self.generations = 0   # cluster generations started so far

    @staticmethod
    def size(workers: int) -> int:
        return GENERATIONS * RESOURCES * workers * _CELL

    @classmethod
    def allocate(cls, workers: int) -> mmap.mmap:
        """The shared segment (zeroed): make it before forking, pass it to every worker."""
        return mmap.mmap(-1, cls.size(workers), flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)

    def breaker(self, thresholds: CircuitBreakerThresholds) -> SharedCircuitBreaker:
        """The breaker of the next cluster generation (call in the same order in every worker)."""
        base = self.generations % GENERATIONS * RESOURCES * self.workers
        self.generations += 1
        cells = self._cells
        own: list[int] = []
        others: list[tuple[int, ...]] = []
        for resource in range(RESOURCES):
            first = base + resource * self.workers
            own.append(first + self.worker)
            cells[first + self.worker] = 0
            others.append(tuple(first + w for w in range(self.workers) if w != self.worker))
        return SharedCircuitBreaker(thresholds, cells, tuple(own), tuple(others))


class SharedCircuitBreaker(CircuitBreaker):
    """A cluster's breaker in one worker, its thresholds checked against every worker's counts."""

    __slots__ = ("_cells", "_cx", "_cx_others", "_pending", "_pending_others", "_pools", "_pools_others",
                 "_retry", "_retry_others", "_rq", "_rq_others")

    def __init__(self, thresholds: CircuitBreakerThresholds, cells: memoryview,
                 own: tuple[int, ...], others: tuple[tuple[int, ...], ...]) -> None:
        super().__init__(thresholds)
        self._cells = cells
        self._cx, self._pending, self._rq, self._retry, self._pools = own
        (self._cx_others, self._pending_others, self._rq_others, self._retry_others,
         self._pools_others) = others

    def _sum(self, others: tuple[int, ...]) -> int:
        cells = self._cells
        total = 0
        for cell in others:
            total += cells[cell]
        return total

    def try_start_request(self) -> bool:
        cells = self._cells
        total = self.requests
        for cell in self._rq_others:
            total += cells[cell]
        if total >= self.thresholds.max_requests:
            self.rq_active_overflow += 1
            return False
        self.requests += 1
        cells[self._rq] = self.requests
        return True

    def finish_request(self) -> None:
        self.requests -= 1
        self._cells[self._rq] = self.requests

    def try_start_pending(self) -> bool:
        cells = self._cells
        total = self.pending_requests
        for cell in self._pending_others:
            total += cells[cell]
        if total >= self.thresholds.max_pending_requests:
            self.rq_pending_overflow += 1
            return False
        self.pending_requests += 1
        cells[self._pending] = self.pending_requests
        return True

    def finish_pending(self) -> None:
        self.pending_requests -= 1
        self._cells[self._pending] = self.pending_requests

    def try_open_connection(self) -> bool:
        cells = self._cells
        total = self.connections
        for cell in self._cx_others:
            total += cells[cell]
        if total >= self.thresholds.max_connections:
            self.cx_overflow += 1
            return False
        self.connections += 1
        cells[self._cx] = self.connections
        return True

    def close_connection(self) -> None:
        self.connections -= 1
        self._cells[self._cx] = self.connections

    def open_pool(self) -> None:
        self.connection_pools += 1
        self._cells[self._pools] = self.connection_pools

    def close_pool(self) -> None:
        self.connection_pools -= 1
        self._cells[self._pools] = self.connection_pools

    def try_start_retry(self) -> bool:
        requests = self.requests + self._sum(self._rq_others)
        pending = self.pending_requests + self._sum(self._pending_others)
        if self.retries + self._sum(self._retry_others) >= retry_limit(self.thresholds, requests, pending):
            self.rq_retry_overflow += 1
            return False
        self.retries += 1
        self._cells[self._retry] = self.retries
        return True

    def finish_retry(self) -> None:
        self.retries -= 1
        self._cells[self._retry] = self.retries

    def totals(self) -> tuple[int, int, int, int, int]:
        return (self.connections + self._sum(self._cx_others),
                self.pending_requests + self._sum(self._pending_others),
                self.requests + self._sum(self._rq_others),
                self.retries + self._sum(self._retry_others),
                self.connection_pools + self._sum(self._pools_others))
