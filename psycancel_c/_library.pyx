# Included by _pq.pyx: ``Libpq``, one dlopen()ed library and its function table.

_cache = {}
_cache_lock = threading.Lock()


cdef void* _symbol(void* handle, const char* name, str path, bint required) except? NULL:
    cdef void* sym = dlsym(handle, name)
    if sym == NULL and required:
        raise InterfaceError(M.not_usable_libpq(path, name.decode()))
    return sym


cdef class Libpq:
    """A loaded libpq (compiled twin). Use :meth:`load`; one instance per file."""

    cdef void* _handle
    cdef Functions _f
    cdef str _path
    cdef int _version
    cdef bint _has_cancel_conn
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("use Libpq.load() to get a Libpq")

    @staticmethod
    cdef Libpq _create(void* handle, str path):
        cdef Libpq self = Libpq.__new__(Libpq)
        cdef Functions* f = &self._f
        self._handle = handle
        self._path = path
        f.PQlibVersion = <fn_lib_version>_symbol(handle, b"PQlibVersion", path, True)
        f.PQstatus = <fn_conn_int>_symbol(handle, b"PQstatus", path, True)
        f.PQerrorMessage = <fn_conn_text>_symbol(handle, b"PQerrorMessage", path, True)
        f.PQsocket = <fn_conn_int>_symbol(handle, b"PQsocket", path, True)
        f.PQsslInUse = <fn_conn_int>_symbol(handle, b"PQsslInUse", path, True)
        f.PQbackendPID = <fn_conn_int>_symbol(handle, b"PQbackendPID", path, True)
        f.PQsslAttribute = <fn_ssl_attribute>_symbol(handle, b"PQsslAttribute", path, True)
        f.PQgssEncInUse = <fn_conn_int>_symbol(handle, b"PQgssEncInUse", path, False)
        f.PQconninfo = <fn_conninfo>_symbol(handle, b"PQconninfo", path, True)
        f.PQconninfoFree = <fn_conninfo_free>_symbol(handle, b"PQconninfoFree", path, True)
        f.PQgetCancel = <fn_get_cancel>_symbol(handle, b"PQgetCancel", path, True)
        f.PQcancel = <fn_cancel>_symbol(handle, b"PQcancel", path, True)
        f.PQfreeCancel = <fn_free_cancel>_symbol(handle, b"PQfreeCancel", path, True)

        f.PQcancelCreate = <fn_cancel_create>_symbol(handle, b"PQcancelCreate", path, False)
        f.PQcancelStart = <fn_cc_int>_symbol(handle, b"PQcancelStart", path, False)
        f.PQcancelBlocking = <fn_cc_int>_symbol(handle, b"PQcancelBlocking", path, False)
        f.PQcancelPoll = <fn_cc_int>_symbol(handle, b"PQcancelPoll", path, False)
        f.PQcancelStatus = <fn_cc_int>_symbol(handle, b"PQcancelStatus", path, False)
        f.PQcancelSocket = <fn_cc_int>_symbol(handle, b"PQcancelSocket", path, False)
        f.PQcancelErrorMessage = <fn_cc_text>_symbol(
            handle, b"PQcancelErrorMessage", path, False)
        f.PQcancelReset = <fn_cc_void>_symbol(handle, b"PQcancelReset", path, False)
        f.PQcancelFinish = <fn_cc_void>_symbol(handle, b"PQcancelFinish", path, False)
        self._has_cancel_conn = (
            f.PQcancelCreate != NULL
            and f.PQcancelStart != NULL
            and f.PQcancelBlocking != NULL
            and f.PQcancelPoll != NULL
            and f.PQcancelStatus != NULL
            and f.PQcancelSocket != NULL
            and f.PQcancelErrorMessage != NULL
            and f.PQcancelReset != NULL
            and f.PQcancelFinish != NULL
        )
        self._version = f.PQlibVersion()
        return self

    @classmethod
    def load(cls, path=None):
        """Load libpq from ``path``, ``$PSYCANCEL_LIBPQ`` or the system.

        Raises ``OSError`` if the file cannot be loaded and
        :class:`InterfaceError` if it is not a libpq.
        """
        cdef void* handle
        cdef void* version_func
        cdef const char* c_name
        cdef const char* err
        name = os.fspath(path) if path is not None else default_libpq_path()
        with _cache_lock:
            cached = _cache.get(name)
            if cached is not None:
                return cached
            b_name = os.fsencode(name)
            c_name = b_name
            with nogil:
                handle = dlopen(c_name, RTLD_NOW | RTLD_LOCAL)
                err = dlerror() if handle == NULL else NULL
            if handle == NULL:
                message = _message(err) or f"cannot load {name!r}"
                raise OSError(message)
            # A library that is not a libpq stays loaded, as with ctypes.CDLL.
            version_func = dlsym(handle, b"PQlibVersion")
            if version_func == NULL:
                raise InterfaceError(M.not_a_libpq(name))
            real = library_file_of(<uintptr_t>version_func)
            real_path = os.path.realpath(real) if real else os.fsdecode(name)
            lib = _cache.get(real_path)
            if lib is None:
                lib = Libpq._create(handle, real_path)
                _cache[real_path] = lib
            _cache[name] = lib
            return lib

    @property
    def path(self):
        """The file the library was loaded from."""
        return self._path

    @property
    def version(self):
        """``PQlibVersion()``: major * 10000 + minor."""
        return self._version

    @property
    def has_cancel_conn(self):
        """True if the library exports the ``PQcancelCreate`` family."""
        return self._has_cancel_conn

    @property
    def ssl_library(self):
        """The TLS library libpq was built with, or None."""
        cdef const char* raw = self._f.PQsslAttribute(NULL, b"library")
        return raw.decode() if raw != NULL and raw[0] != 0 else None

    @property
    def native_driver(self):
        """This twin's C driver, :data:`NATIVE_DRIVER` (``_driver.pyx``).

        It runs whole cancels of this twin's ``PGcancelConn`` objects without
        the GIL: in the calling thread (``run_blocking``) or in an offload
        engine's thread (``new_engine``); see
        :class:`psycancel.pq.abc.NativeDriver`.
        """
        return NATIVE_DRIVER

    def __repr__(self):
        return f"<Libpq {self._version} {self._path!r} (c)>"


cdef Libpq _check_libpq(object libpq):
    if not isinstance(libpq, Libpq):
        raise InterfaceError(M.other_twin_libpq("compiled", libpq))
    return <Libpq>libpq

