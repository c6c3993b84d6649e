"""The test harness, shared by every test folder (and nothing else).

* ``active``: the one "is the query running yet?" poll (standard library only);
* ``queries``: connections and queries through psycancel's ``PGconn``;
* ``modes``: the one mode dispatcher (sync, asyncio placements, Trio);
* ``fds``: descriptor accounting for leak checks;
* ``twins``: the two implementations and the two libpqs (>= 17 and the system's);
* ``spies``: the seams every entry point goes through (cancel objects, stages);
* ``proxy``, ``faults``: the recording TCP proxy (delay, black-hole, reset) and
  its reset-in-the-TLS-handshake variant;
* ``fake_server``, ``wire``: a loopback cancel receiver and the wire format;
* ``sqlstate``: the SQLSTATE of a driver error along its cause/context chain;
* ``drivers``: real drivers in threads and child processes
  (``legacy_driver_child.py``, ``never_hang_child.py`` are those children).
"""
