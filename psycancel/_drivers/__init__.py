"""What object did the user give us: from a connection to an open ``PGconn``.

What it holds:

* ``resolve``: :func:`~psycancel._drivers.resolve.as_pgconn`, the one entry
  point, and the table of adapters it consults;
* ``adapter``: what a row of that table is (:class:`Adapter`) and the
  helpers the family modules share;
* ``protocol``: the ``__psycancel_pgconn__`` protocol, for drivers that make
  themselves cancellable;
* ``owner``: which loaded libpq created a driver's ``PGconn`` (a pointer is
  only ever handed to the libpq that made it);
* one small module per driver or framework family (``psycopg2``, ``aiopg``,
  ``psycopg``), each exporting its rows of the table as ``ADAPTERS``.

A family is recognised only if the program imported it already (every row
names the module to find in ``sys.modules``): resolving never imports a driver.
This package imports ``psycancel.pq`` and ``psycancel.errors``; the cancel
engine does not import it (the public API joins the two).
"""
