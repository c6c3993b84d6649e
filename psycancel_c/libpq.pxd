# cython: language_level=3
# The compiled twin's declarations: libpq's types and functions, and the few
# system calls its wait loops make. Declarations only (no code): cimported by
# _pq.pyx, the one extension module (psycancel_c._pq).
#
# No libpq header is included: libpq is not needed at build time. Its structs
# are opaque (incomplete C types, never dereferenced here), every function is
# a function-pointer type resolved with dlsym() on a dlopen()ed handle
# (Libpq._create fills a Functions table per library), and libpq's enums are
# C ints, as in its ABI. Every pointer type is ``noexcept nogil``: any libpq
# call can be made with the GIL released.

# Opaque libpq types.
cdef extern from *:
    """
    typedef struct psycancel_pg_conn psycancel_PGconn;
    typedef struct psycancel_pg_cancel psycancel_PGcancel;
    typedef struct psycancel_pg_cancel_conn psycancel_PGcancelConn;
    """
    ctypedef struct PGconn_t "psycancel_PGconn"
    ctypedef struct PGcancel_t "psycancel_PGcancel"
    ctypedef struct PGcancelConn_t "psycancel_PGcancelConn"

# PQconninfoOption, as in libpq-fe.h (a stable public struct).
cdef extern from *:
    """
    typedef struct psycancel_conninfo_option {
        char *keyword; char *envvar; char *compiled; char *val;
        char *label; char *dispchar; int dispsize;
    } psycancel_PQconninfoOption;
    """
    ctypedef struct PQconninfoOption_t "psycancel_PQconninfoOption":
        char* keyword
        char* val

# Prototypes of the libpq functions used.
ctypedef int (*fn_lib_version)() noexcept nogil
ctypedef int (*fn_conn_int)(PGconn_t* conn) noexcept nogil
ctypedef const char* (*fn_conn_text)(PGconn_t* conn) noexcept nogil
ctypedef const char* (*fn_ssl_attribute)(PGconn_t* conn, const char* name) noexcept nogil
ctypedef PGcancel_t* (*fn_get_cancel)(PGconn_t* conn) noexcept nogil
ctypedef int (*fn_cancel)(PGcancel_t* cancel, char* errbuf, int errbufsize) noexcept nogil
ctypedef void (*fn_free_cancel)(PGcancel_t* cancel) noexcept nogil
ctypedef PGcancelConn_t* (*fn_cancel_create)(PGconn_t* conn) noexcept nogil
ctypedef int (*fn_cc_int)(PGcancelConn_t* cc) noexcept nogil
ctypedef const char* (*fn_cc_text)(PGcancelConn_t* cc) noexcept nogil
ctypedef void (*fn_cc_void)(PGcancelConn_t* cc) noexcept nogil
ctypedef PQconninfoOption_t* (*fn_conninfo)(PGconn_t* conn) noexcept nogil
ctypedef void (*fn_conninfo_free)(PQconninfoOption_t* options) noexcept nogil


# The function table of one loaded libpq (fields named as in C).
cdef struct Functions:
    fn_lib_version PQlibVersion
    fn_conn_int PQstatus
    fn_conn_text PQerrorMessage
    fn_conn_int PQsocket
    fn_conn_int PQsslInUse
    fn_conn_int PQbackendPID
    fn_ssl_attribute PQsslAttribute
    fn_get_cancel PQgetCancel
    fn_cancel PQcancel
    fn_free_cancel PQfreeCancel
    fn_conn_int PQgssEncInUse  # libpq >= 12: NULL when missing
    fn_conninfo PQconninfo
    fn_conninfo_free PQconninfoFree
    # The PQcancelConn family (libpq >= 17): NULL when missing.
    fn_cancel_create PQcancelCreate
    fn_cc_int PQcancelStart
    fn_cc_int PQcancelBlocking
    fn_cc_int PQcancelPoll
    fn_cc_int PQcancelStatus
    fn_cc_int PQcancelSocket
    fn_cc_text PQcancelErrorMessage
    fn_cc_void PQcancelReset
    fn_cc_void PQcancelFinish


# What the C driver's wait loops call besides libpq.
cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, nfds_t nfds, int timeout)
    const short POLLIN
    const short POLLOUT
