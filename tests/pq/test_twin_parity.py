"""The two twins of ``psycancel.pq`` (ctypes and compiled) have one interface.

Statically: the same public names, the same kinds of members (property,
method, classmethod) with the same signatures, and every member of the
Protocols in ``psycancel.pq.abc``; the compiled twin's type stub
(``psycancel_c/_pq.pyi``) derives its classes from those Protocols and adds
no member of its own, and its C driver (``NATIVE_DRIVER``) has the members of
``NativeDriver``. Against a live server: the same value types (``status`` is
a ``ConnStatus``, ``socket`` an ``int``, ...) and the same values.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import select
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import psycancel_c
from psycancel.pq import _ctypes
from psycancel.pq import abc as pq_abc
from psycancel.pq.enums import ConnStatus, PollingStatus
from testing import client
from testing.client import ExecStatus
from tests.support.twins import compiled_twin, new_libpq_path, old_libpq_path

CLASSES = ["Libpq", "PGconn", "PGcancelConn", "PGcancel"]
STUB = Path(psycancel_c.__file__).resolve().parent / "_pq.pyi"
# The compiled twin's C driver: its classes and the Protocols they implement.
COMPILED_ONLY = {"OffloadEngine": "OffloadEngine", "_NativeDriver": "NativeDriver"}
# Every class of the stub and the Protocol of psycancel.pq.abc it derives from.
STUB_PROTOCOLS = {**{name: name for name in CLASSES}, **COMPILED_ONLY}

# Public attributes that only one twin has on its *instances*, on purpose.
INSTANCE_EXTRAS = {
    # The ctypes twin keeps its table of function pointers in a public ``f``
    # (used by nothing outside _ctypes.py); the compiled one keeps it in C.
    ("python", "Libpq"): {"f"},
}


def public_names(obj: object) -> set[str]:
    return {name for name in dir(obj) if not name.startswith("_")}


def member_kind(cls: type, name: str) -> str:
    """property, classmethod, staticmethod, method or attribute."""
    attr = inspect.getattr_static(cls, name)
    if isinstance(attr, property) or inspect.isgetsetdescriptor(attr):
        return "property"
    if isinstance(attr, classmethod) or type(attr).__name__ == "classmethod_descriptor":
        return "classmethod"
    if isinstance(attr, staticmethod):
        return "staticmethod"
    if callable(attr):
        return "method"
    return "attribute"


def signature_shape(func: Any) -> list[tuple[str, Any, Any]]:
    """Parameter names, kinds and defaults (annotations are ignored)."""
    sig = inspect.signature(func)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


def protocol_members(proto: type) -> dict[str, str]:
    """The members a Protocol of psycancel.pq.abc declares, with their kinds."""
    return {name: member_kind(proto, name) for name in vars(proto) if not name.startswith("_")}


# =====================================================================================
# Static parity
# =====================================================================================


def test_same_module_names() -> None:
    c = compiled_twin()
    assert sorted(c.__all__) == sorted(_ctypes.__all__) == sorted(CLASSES)
    for name in CLASSES:
        assert isinstance(getattr(_ctypes, name), type)
        assert isinstance(getattr(c, name), type)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_same_public_members(cls_name: str) -> None:
    c = compiled_twin()
    py_cls, c_cls = getattr(_ctypes, cls_name), getattr(c, cls_name)
    assert public_names(c_cls) == public_names(py_cls)


@pytest.mark.parametrize("cls_name", CLASSES)
def test_same_member_kinds_and_signatures(cls_name: str) -> None:
    c = compiled_twin()
    py_cls, c_cls = getattr(_ctypes, cls_name), getattr(c, cls_name)
    for name in sorted(public_names(py_cls)):
        kind = member_kind(py_cls, name)
        assert member_kind(c_cls, name) == kind, f"{cls_name}.{name}"
        if kind in ("method", "classmethod", "staticmethod"):
            assert signature_shape(getattr(c_cls, name)) == signature_shape(
                getattr(py_cls, name)
            ), f"{cls_name}.{name}"


@pytest.mark.parametrize("cls_name", CLASSES)
def test_protocol_members_exist_in_both(twin: ModuleType, cls_name: str) -> None:
    proto = getattr(pq_abc, cls_name)
    cls = getattr(twin, cls_name)
    members = protocol_members(proto)
    assert members, f"no members found on Protocol {cls_name}"
    for name, kind in members.items():
        assert hasattr(cls, name), f"{twin.__name__}.{cls_name} lacks {name}"
        assert member_kind(cls, name) == kind, f"{twin.__name__}.{cls_name}.{name}"
        if kind in ("method", "classmethod"):
            # Same parameters as the Protocol (self included; cls bound).
            assert signature_shape(getattr(cls, name)) == signature_shape(getattr(proto, name)), (
                f"{twin.__name__}.{cls_name}.{name}"
            )


@pytest.mark.parametrize("cls_name", CLASSES)
def test_public_members_are_documented(twin: ModuleType, cls_name: str) -> None:
    cls = getattr(twin, cls_name)
    assert (cls.__doc__ or "").strip()
    for name in public_names(cls):
        doc = inspect.getattr_static(cls, name).__doc__ or ""
        assert doc.strip(), f"{twin.__name__}.{cls_name}.{name} has no docstring"


def test_classmethod_signatures() -> None:
    """The documented constructors, spelled out (both twins)."""
    for mod in (_ctypes, compiled_twin()):
        assert signature_shape(mod.Libpq.load) == [
            ("path", inspect.Parameter.POSITIONAL_OR_KEYWORD, None)
        ]
        assert signature_shape(mod.PGconn.from_ptr) == [
            ("ptr", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
            ("libpq", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ]


QUERY_CLIENT_MEMBERS = {
    "connect",
    "connect_start",
    "connect_poll",
    "send_query",
    "consume_input",
    "is_busy",
    "get_result",
    "borrowed",
}
"""The query client psycancel no longer has (``testing/client.py`` is the tests' one)."""

QUERY_CLIENT_SYMBOLS = (
    "PQconnectdb",
    "PQconnectStart",
    "PQconnectPoll",
    "PQsendQuery",
    "PQgetResult",
    "PQconsumeInput",
    "PQisBusy",
    "PQfinish",
    "PQclear",
)


def test_pq_is_borrowed_only() -> None:
    """Neither twin can connect, query or finish a connection, nor binds libpq to do so."""
    from psycancel.pq._ctypes import _functions

    bound = set(_functions.REQUIRED) | set(_functions.CANCEL_CONN) | set(_functions.OPTIONAL)
    assert bound.isdisjoint(QUERY_CLIENT_SYMBOLS), bound & set(QUERY_CLIENT_SYMBOLS)
    for mod in (_ctypes, compiled_twin()):
        assert public_names(mod.PGconn).isdisjoint(QUERY_CLIENT_MEMBERS), mod.__name__
    assert set(protocol_members(pq_abc.PGconn)).isdisjoint(QUERY_CLIENT_MEMBERS)
    compiled_binary = Path(compiled_twin().__file__).read_bytes()
    for symbol in QUERY_CLIENT_SYMBOLS:
        assert symbol.encode() + b"\0" not in compiled_binary, symbol


def test_classes_cannot_be_instantiated_directly() -> None:
    """Both twins refuse to wrap an arbitrary pointer by calling the class."""
    for mod in (_ctypes, compiled_twin()):
        for name in CLASSES:
            with pytest.raises(TypeError, match=r"use .*\(\)"):
                getattr(mod, name)(0xDEAD, None)


# =====================================================================================
# The compiled twin's type stub (psycancel_c/_pq.pyi) and its C driver
# =====================================================================================


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text())


def stub_class(cls_name: str) -> ast.ClassDef:
    for node in stub_tree().body:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            return node
    raise AssertionError(f"{STUB} declares no class {cls_name}")


def stub_imports() -> dict[str, Any]:
    """The names the stub imports (``from M import N as A``), as the objects they name."""
    names: dict[str, Any] = {}
    for node in stub_tree().body:
        if isinstance(node, ast.ImportFrom):
            assert node.module and node.level == 0, ast.unparse(node)
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.asname or "." not in alias.name, ast.unparse(node)
                names[alias.asname or alias.name] = importlib.import_module(alias.name)
    return names


def stub_bases(cls_name: str) -> list[Any]:
    """The base classes of ``cls_name`` in the stub, resolved through its imports."""
    names = stub_imports()

    def resolve(expr: ast.expr) -> Any:
        if isinstance(expr, ast.Name):
            return names[expr.id]
        if isinstance(expr, ast.Attribute):
            return getattr(resolve(expr.value), expr.attr)
        raise AssertionError(f"unexpected base {ast.unparse(expr)} of {cls_name}")

    return [resolve(base) for base in stub_class(cls_name).bases]


def stub_members(cls_name: str) -> dict[str, ast.stmt]:
    """Every member (method, property, attribute) the stub declares on ``cls_name``."""
    members: dict[str, ast.stmt] = {}
    for item in stub_class(cls_name).body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members[item.name] = item
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            members[item.target.id] = item
        elif isinstance(item, ast.Assign):
            members.update({t.id: item for t in item.targets if isinstance(t, ast.Name)})
        elif not (isinstance(item, ast.Expr) and isinstance(item.value, ast.Constant)):
            raise AssertionError(f"unexpected statement in {cls_name}: {ast.unparse(item)}")
    return members


def stub_kind(func: ast.stmt) -> str:
    if not isinstance(func, ast.FunctionDef):
        return "attribute"
    decorators = {ast.unparse(d) for d in func.decorator_list}
    if "property" in decorators:
        return "property"
    if "classmethod" in decorators:
        return "classmethod"
    if "staticmethod" in decorators:
        return "staticmethod"
    return "method"


@pytest.mark.parametrize("cls_name", sorted(STUB_PROTOCOLS))
def test_stub_classes_derive_from_the_protocols(cls_name: str) -> None:
    proto = getattr(pq_abc, STUB_PROTOCOLS[cls_name])
    assert proto in stub_bases(cls_name), f"{cls_name} does not derive from abc.{proto.__name__}"


@pytest.mark.parametrize("cls_name", [*CLASSES, "_NativeDriver"])
def test_stub_declares_nothing_of_its_own(cls_name: str) -> None:
    """The interface is the Protocol's; the stub only says the class refuses construction."""
    declared = stub_members(cls_name)
    assert set(declared) == {"__init__"}, f"{cls_name} declares {sorted(declared)}"
    init = declared["__init__"]
    assert isinstance(init, ast.FunctionDef)
    assert init.args.vararg is not None and init.args.kwarg is not None, cls_name


def test_stub_engine_spells_out_its_protocol() -> None:
    """The one class callers construct: concrete methods, exactly the Protocol's."""
    declared = stub_members("OffloadEngine")
    members = protocol_members(pq_abc.OffloadEngine)
    assert set(declared) - {"__init__"} == set(members)
    for name, kind in members.items():
        assert stub_kind(declared[name]) == kind, f"OffloadEngine.{name}"


def test_stub_module_names() -> None:
    c = compiled_twin()
    tree = stub_tree()
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    # The twin interface, plus the compiled-only C driver (not exported).
    assert classes - set(COMPILED_ONLY) == set(CLASSES) == set(c.__all__)
    assert hasattr(compiled_twin(), "OffloadEngine")
    declared = classes | {
        node.target.id
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }
    declared |= {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert {"NATIVE_DRIVER", "run_blocking", "OUTCOME_OK", "OUTCOME_ABORTED"} <= declared
    for name in declared:
        assert hasattr(c, name), f"the stub declares {name}, the module has none"


@pytest.mark.parametrize("cls_name", sorted(COMPILED_ONLY))
def test_protocol_members_exist_in_the_c_driver(cls_name: str) -> None:
    proto = getattr(pq_abc, COMPILED_ONLY[cls_name])
    cls = getattr(compiled_twin(), cls_name)
    members = protocol_members(proto)
    assert members, f"no members found on Protocol {proto.__name__}"
    assert (cls.__doc__ or "").strip()
    for name, kind in members.items():
        assert hasattr(cls, name), f"{cls_name} lacks {name}"
        assert member_kind(cls, name) == kind, f"{cls_name}.{name}"
        assert (inspect.getattr_static(cls, name).__doc__ or "").strip(), f"{cls_name}.{name}"
        if kind in ("method", "classmethod"):
            assert signature_shape(getattr(cls, name)) == signature_shape(getattr(proto, name)), (
                f"{cls_name}.{name}"
            )


def test_native_driver_singleton() -> None:
    """``NATIVE_DRIVER`` is the one driver; its codes are the module-level ones."""
    c = compiled_twin()
    driver = c.NATIVE_DRIVER
    assert type(driver) is c._NativeDriver
    codes = {
        name: getattr(driver, f"OUTCOME_{name}") for name in ("OK", "FAILED", "TIMEOUT", "ABORTED")
    }
    assert all(type(code) is int for code in codes.values())
    assert len(set(codes.values())) == 4
    for name, code in codes.items():
        assert getattr(c, f"OUTCOME_{name}") == code
        with pytest.raises(AttributeError):
            setattr(driver, f"OUTCOME_{name}", code + 1)
    with pytest.raises(TypeError, match=r"use .*native_driver"):
        c._NativeDriver()
    engine = driver.new_engine()
    try:
        assert type(engine) is c.OffloadEngine
    finally:
        engine.close()


def test_libpq_declares_its_native_driver(twin: ModuleType, new_libpq: Any) -> None:
    """``Libpq.native_driver``: the compiled twin's C driver, None for the ctypes twin."""
    if twin is _ctypes:
        assert new_libpq.native_driver is None
    else:
        assert new_libpq.native_driver is twin.NATIVE_DRIVER


# =====================================================================================
# Live parity: value types and values
# =====================================================================================


def instance_public_names(twin: ModuleType, cls_name: str, obj: object) -> set[str]:
    extras = INSTANCE_EXTRAS.get(("python" if twin is _ctypes else "c", cls_name), set())
    return public_names(obj) - extras


@pytest.fixture
def conn(twin: ModuleType, new_libpq: Any, dsn: str) -> Iterator[Any]:
    """The ``PGconn`` of ``twin`` wrapping an open client connection (plain, TLS, verify-full)."""
    made = client.connect(dsn, libpq=new_libpq)
    try:
        yield made.pgconn
    finally:
        made.finish()


def test_libpq_value_types(twin: ModuleType, new_libpq: Any) -> None:
    lib = new_libpq
    assert type(lib) is twin.Libpq
    assert type(lib.path) is str and os.path.isabs(lib.path)
    assert type(lib.version) is int and lib.version >= 170000
    assert lib.has_cancel_conn is True
    assert lib.ssl_library is None or type(lib.ssl_library) is str
    assert instance_public_names(twin, "Libpq", lib) == public_names(twin.Libpq)
    if os.path.exists(old_libpq_path()):
        old = twin.Libpq.load(old_libpq_path())
        assert old.has_cancel_conn is False
        assert type(old.version) is int and old.version < 170000


def test_libpq_same_values_in_both_twins(new_libpq: Any) -> None:
    c = compiled_twin()
    py_lib, c_lib = _ctypes.Libpq.load(new_libpq_path()), c.Libpq.load(new_libpq_path())
    for name in ("path", "version", "has_cancel_conn", "ssl_library"):
        assert getattr(c_lib, name) == getattr(py_lib, name), name


def test_pgconn_value_types(twin: ModuleType, conn: Any, dsn: str) -> None:
    assert type(conn) is twin.PGconn
    assert instance_public_names(twin, "PGconn", conn) == public_names(twin.PGconn)
    assert type(conn.libpq) is twin.Libpq
    assert type(conn.pgconn_ptr) is int and conn.pgconn_ptr > 0
    assert conn.closed is False
    assert type(conn.status) is ConnStatus and conn.status == ConnStatus.OK
    assert type(conn.error_message) is str
    assert type(conn.socket) is int and conn.socket >= 0
    assert type(conn.ssl_in_use) is bool
    assert conn.ssl_in_use is ("sslmode=disable" not in dsn)

    borrowed = twin.PGconn.from_ptr(conn.pgconn_ptr, conn.libpq)
    assert type(borrowed) is twin.PGconn
    assert borrowed.pgconn_ptr == conn.pgconn_ptr
    assert borrowed.socket == conn.socket
    assert borrowed.finish() is None
    assert borrowed.closed is True and conn.closed is False


def test_error_message_loses_its_trailing_newline(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    """libpq's message of a failed query, read through the twin's ``error_message``."""
    made = client.connect(dsn_plain, libpq=new_libpq)
    try:
        made.send_query("select 1/0")
        assert made.get_result() is not None
        assert made.get_result() is None
        raw = made.error_message
        assert "division by zero" in raw and made.pgconn.error_message == raw
        assert not made.pgconn.error_message.endswith("\n")
    finally:
        made.finish()


def test_client_row_values_are_byte_exact(new_libpq: Any, dsn_plain: str) -> None:
    """The tests' client: only error messages lose their trailing newline."""
    conn = client.connect(dsn_plain, libpq=new_libpq)
    try:
        res = conn.execute("select 1, null, 'x'")
        assert type(res.status) is ExecStatus and res.status == ExecStatus.TUPLES_OK
        assert res.sqlstate is None and res.message == "" and res.rows == (("1", None, "x"),)
        err = conn.execute("select 1/0")
        assert err.status == ExecStatus.FATAL_ERROR and err.sqlstate == "22012"
        _check_byte_exact(conn)
    finally:
        conn.finish()


def _check_byte_exact(conn: Any) -> None:
    conn.send_query("select E'y\\n', E'\\n', ' z ', '', E'a\\r\\n\\n', 'é'")
    res = conn.get_result()
    assert conn.get_result() is None
    assert res.rows == (("y\n", "\n", " z ", "", "a\r\n\n", "é"),)
    conn.send_query("select 1/0")
    err = conn.get_result()
    assert conn.get_result() is None
    assert err.message and not err.message.endswith("\n")


def test_pgconn_of_a_connection_in_progress(
    twin: ModuleType, new_libpq: Any, dsn_plain: str
) -> None:
    """The wrapper reads the status of a connection being made (client: PQconnectPoll)."""
    conn = client.connect_start(dsn_plain, libpq=new_libpq)
    try:
        assert type(conn.pgconn) is twin.PGconn
        assert type(conn.pgconn.status) is ConnStatus
        for _ in range(10_000):
            st = conn.connect_poll()
            assert type(st) is PollingStatus
            if st in (PollingStatus.OK, PollingStatus.FAILED):
                break
            fd = conn.socket
            if st == PollingStatus.READING:
                select.select([fd], [], [], 5)
            else:
                select.select([], [fd], [], 5)
        assert st == PollingStatus.OK, conn.error_message
        assert conn.pgconn.status == ConnStatus.OK
    finally:
        conn.finish()


def test_cancel_conn_value_types(twin: ModuleType, conn: Any) -> None:
    cc = conn.cancel_conn()
    assert type(cc) is twin.PGcancelConn
    assert instance_public_names(twin, "PGcancelConn", cc) == public_names(twin.PGcancelConn)
    assert cc.closed is False
    assert type(cc.status) is ConnStatus and cc.status == ConnStatus.ALLOCATED
    assert type(cc.socket) is int and cc.socket == -1
    assert type(cc.error_message) is str and cc.error_message == ""
    assert cc.blocking() is None
    after: object = cc.status
    assert type(after) is ConnStatus and after == ConnStatus.OK
    assert cc.reset() is None
    assert cc.status == ConnStatus.ALLOCATED
    assert cc.start() is None
    st = cc.poll()
    assert type(st) is PollingStatus
    assert type(cc.socket) is int
    assert cc.finish() is None
    assert cc.closed is True


def test_cancel_handle_value_types(twin: ModuleType, conn: Any) -> None:
    handle = conn.get_cancel()
    assert type(handle) is twin.PGcancel
    assert instance_public_names(twin, "PGcancel", handle) == public_names(twin.PGcancel)
    assert handle.closed is False
    assert handle.cancel() is None
    assert handle.free() is None
    assert handle.closed is True


def test_both_twins_see_the_same_values(new_libpq: Any, dsn: str) -> None:
    c = compiled_twin()
    conns = [client.connect(dsn, libpq=mod.Libpq.load(new_libpq_path())) for mod in (_ctypes, c)]
    try:
        py_conn, c_conn = (conn.pgconn for conn in conns)
        assert type(py_conn) is _ctypes.PGconn and type(c_conn) is c.PGconn
        for name in ("status", "error_message", "ssl_in_use", "closed"):
            assert getattr(c_conn, name) == getattr(py_conn, name), name
        assert type(c_conn.status) is type(py_conn.status)
        for conn in conns:
            conn.execute("select 1/0")  # an error message to compare
        assert c_conn.error_message == py_conn.error_message
        py_cc, c_cc = (conn.cancel_conn() for conn in (py_conn, c_conn))
        for name in ("status", "socket", "error_message", "closed"):
            assert getattr(c_cc, name) == getattr(py_cc, name), name
        py_cc.finish()
        c_cc.finish()
    finally:
        for conn in conns:
            conn.finish()
