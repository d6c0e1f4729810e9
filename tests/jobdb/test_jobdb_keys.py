"""Call identity: which calls share a job, and which arguments cannot be stored."""

from __future__ import annotations

import functools
import textwrap
import threading
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jobdb_helpers import run_python, simulate

from parallelaverage.errors import ArgumentError
from parallelaverage.jobdb import call_key, code_changes, code_fingerprint, code_hash, describe_code_changes


def key(*args, N_runs=10, average_results="all", **kwargs):
    return call_key(simulate, args, kwargs, N_runs=N_runs, average_results=average_results)


def test_positional_keyword_and_defaults_are_one_call():
    reference = key(64)
    assert key(L=64) == reference
    assert key(64, 2.5) == reference
    assert key(64, T=2.5, seed=None) == reference
    assert key(T=2.5, L=64) == reference
    assert reference.digest == key(64).digest and len(reference.digest) == 64
    assert reference.call == "simulate(L=64, T=2.5, seed=None)"


def test_a_different_argument_or_run_option_is_another_call():
    reference = key(64)
    assert key(65) != reference
    assert key(64, T=2.6) != reference
    assert key(64, seed=1) != reference
    assert key(64, N_runs=11) != reference
    assert key(64, average_results="keep") != reference
    assert key(64, average_results=[0]) != reference
    assert key(64, N_runs=(2, 5)) != reference


def test_kinds_of_numbers_and_containers_are_part_of_the_key():
    # int, float and bool are three kinds: a function may branch on type (range(L))
    keys = [key(1), key(1.0), key(True), key(1 + 0j)]
    assert len({k.digest for k in keys}) == len(keys)
    assert key((1, 2)) != key([1, 2])
    assert key(float("nan")) == key(float("nan"))


def test_varargs_and_kwargs_are_bound():
    def f(a, *rest, flag=False, **extra):
        return a

    def k(*args, **kwargs):
        return call_key(f, args, kwargs, N_runs=1)

    assert k(1, 2, 3, x=1, y=2) == k(1, 2, 3, y=2, x=1)
    assert k(1, 2, 3) != k(1, 3, 2)
    assert k(1) == k(a=1, flag=False)
    assert k(1, 2, z=3).call == "f(a=1, *(2,), flag=False, **{'z': 3})"
    assert k(1).call == "f(a=1, flag=False)"


def test_dict_and_set_order_do_not_matter():
    assert key({"a": 1, "b": [1, 2]}) == key({"b": [1, 2], "a": 1})
    assert key({3, 1, 2}) == key({1, 2, 3})
    assert key({1: "x", "1": "y"}) == key({"1": "y", 1: "x"})
    assert key({"a": 1}) != key(OrderedDict(a=1))  # subclasses are keyed with their type


def test_arrays_by_content_dtype_and_shape():
    a = np.arange(12.0)
    assert key(a) == key(a.copy())
    assert key(a.reshape(3, 4)) != key(a)
    assert key(a.astype(np.float32)) != key(a)
    changed = a.copy()
    changed[5] += 1e-12
    assert key(changed) != key(a)
    strided = np.arange(24.0)[::2]
    assert key(strided) == key(np.ascontiguousarray(strided))
    assert key(np.asfortranarray(a.reshape(3, 4))) == key(a.reshape(3, 4))
    assert key(a).arguments["L"] == "ndarray(shape=(12,), dtype=float64)"
    # object arrays go through pickle, by content too
    assert key(np.array([{"a": 1}, None], dtype=object)) == key(np.array([{"a": 1}, None], dtype=object))


def test_numpy_numbers_are_the_python_number_of_their_kind():
    assert key(np.int64(64)) == key(64) == key(np.uint8(64)) == key(np.int16(64))
    assert key(np.float64(0.5)) == key(0.5) == key(np.float32(0.5)) == key(np.float16(0.5))
    assert key(np.bool_(True)) == key(True) and key(np.bool_(False)) == key(False)
    assert key(np.complex128(1 + 2j)) == key(1 + 2j) == key(np.complex64(1 + 2j))
    assert key(np.float32(0.1)) == key(float(np.float32(0.1))) != key(0.1)  # the float32 nearest 0.1
    assert key(np.float32("nan")) == key(float("nan")) and key(np.float64(-0.0)) == key(-0.0) != key(0.0)
    assert key(np.float64(64.0)) != key(64) and key(np.int64(1)) != key(True)
    # inside containers too
    assert key([np.int32(3), {"T": np.float64(2.5)}]) == key([3, {"T": 2.5}])


def test_a_longdouble_a_float_cannot_hold_keeps_its_own_token():
    third = np.longdouble(1) / 3
    assert key(np.longdouble(0.5)) == key(0.5)
    if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:  # x86: 80-bit long double
        assert key(third) != key(float(third))
        assert key(third) == key(np.longdouble(1) / 3)
        assert key(np.clongdouble(third)) != key(complex(third))


@settings(database=None)
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_every_int64_is_the_int(n):
    assert key(np.int64(n)) == key(n)


@settings(database=None)
@given(st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]),
       st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_every_integer_dtype_keys_as_the_int_it_holds(dtype, n):
    info = np.iinfo(dtype)
    if info.min <= n <= info.max:
        assert key(dtype(n)) == key(n)


@settings(database=None)
@given(st.floats(width=16), st.floats(width=32))
def test_small_floats_key_as_the_python_float_they_equal(x16, x32):
    assert key(np.float16(x16)) == key(x16)
    assert key(np.float32(x32)) == key(x32) == key(np.float64(x32))


@pytest.mark.parametrize(
    "bad, reason",
    [(threading.Lock(), "cannot pickle '_thread.lock' object"), ((i for i in range(3)), "cannot pickle 'generator'")],
    ids=["lock", "generator"],
)
def test_unpicklable_argument_names_the_argument(bad, reason):
    with pytest.raises(TypeError) as info:
        key(64, seed=bad)
    message = str(info.value)
    assert "argument 'seed' of simulate() cannot be stored" in message
    assert reason in message
    assert "pass something picklable" in message


def test_unpicklable_element_inside_a_container_names_the_argument():
    with pytest.raises(TypeError, match="argument 'T' of simulate"):
        key(64, T={"options": [1, threading.Lock()]})


def test_a_deeply_nested_argument_is_named_like_any_that_cannot_be_stored():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ArgumentError, match=r"argument 'T' of simulate\(\) cannot be stored: nested too deeply"):
        key(64, T=deep)
    nested_dict: dict = {}
    for _ in range(100_000):
        nested_dict = {"a": nested_dict}
    with pytest.raises(TypeError, match="argument 'seed' of simulate.* nested too deeply"):
        key(64, seed=nested_dict)
    assert key(64, T=[[[[1]]]]) == key(64, T=[[[[1]]]])  # ordinary nesting is fine


def test_arrays_are_hashed_in_place_with_the_bytes_of_tobytes():
    import hashlib
    import tracemalloc

    from parallelaverage.jobdb.keys import _array_digest

    big = np.arange(1_000_000, dtype=np.float64)  # 8 MB
    tracemalloc.start()  # numpy reports its data buffers to tracemalloc
    try:
        digest = _array_digest(big)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 100_000, f"hashing an 8 MB array allocated {peak_bytes} bytes: a copy"
    assert digest == hashlib.sha256(big.tobytes()).hexdigest()
    for array in (big[::3], np.asfortranarray(big[:12].reshape(3, 4)), np.zeros((0, 3)), np.array(1.5),
                  np.arange(6, dtype=">i4"), np.zeros(3, dtype=[("a", "<f8"), ("b", "i1")])):
        assert _array_digest(array) == hashlib.sha256(array.tobytes(order="C")).hexdigest()


def test_self_referencing_list_is_keyed_by_pickle():
    loop = [1]
    loop.append(loop)
    assert key(loop) == key(loop)


def test_lambdas_and_objects_are_keyed_by_pickle():
    assert key(64, seed=functools.partial(max, 1)) == key(64, seed=functools.partial(max, 1))
    assert key(64, seed=functools.partial(max, 1)) != key(64, seed=functools.partial(max, 2))


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"N_runs": 0}, ValueError, "N_runs=0: must be at least 1"),
        ({"N_runs": -3}, ValueError, "N_runs=-3: must be at least 1"),
        ({"N_runs": 2.0}, TypeError, "N_runs=2.0: must be an integer"),
        ({"N_runs": True}, TypeError, "N_runs=True: must be an integer"),
        ({"N_runs": 2, "average_results": "yes"}, TypeError, "average_results='yes'"),
    ],
)
def test_run_options_are_checked(kwargs, error, message):
    with pytest.raises(error, match=message):
        call_key(simulate, (1,), {}, **kwargs)


def test_arguments_that_do_not_fit_the_signature():
    with pytest.raises(TypeError, match=r"simulate\(L.*cannot be called with these arguments: missing"):
        call_key(simulate, (), {}, N_runs=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        call_key(simulate, (1,), {"nope": 2}, N_runs=1)


def test_methods_and_partials_include_their_bound_state():
    class Model:
        def __init__(self, scale):
            self.scale = scale

        def run(self, x):
            return x * self.scale

    m1 = call_key(Model(1).run, (2,), {}, N_runs=1)
    assert m1 == call_key(Model(1).run, (2,), {}, N_runs=1)
    assert m1 != call_key(Model(5).run, (2,), {}, N_runs=1)
    assert m1.call == "Model.run(x=2)" and m1.function.endswith("Model.run") and m1.name == "run"
    # a method decorated in its class body gets the instance as its first argument
    unbound = call_key(Model.run, (Model(1), 2), {}, N_runs=1)
    assert unbound.call == "Model.run(self=<Model object>, x=2)"
    assert unbound == call_key(Model.run, (Model(1),), {"x": 2}, N_runs=1)
    assert unbound != call_key(Model.run, (Model(5), 2), {}, N_runs=1)

    class Unpicklable:
        def __init__(self):
            self.lock = threading.Lock()

        def run(self, x):
            return x

    with pytest.raises(TypeError, match="the callable .*Unpicklable.run cannot be stored"):
        call_key(Unpicklable().run, (2,), {}, N_runs=1)
    p1 = call_key(functools.partial(simulate, T=1.0), (2,), {}, N_runs=1)
    p2 = call_key(functools.partial(simulate, T=3.0), (2,), {}, N_runs=1)
    assert p1 != p2
    assert p1.function.endswith(".simulate") and p1.name == "simulate"


def test_readable_form_is_small_and_truncated():
    k = key("x" * 10_000, T=list(range(1000)))
    assert len(k.arguments["L"]) <= 80 and "..." in k.arguments["L"]
    assert len(k.arguments["T"]) <= 80
    readable = k.readable()
    assert readable["function"].endswith("jobdb_helpers.simulate")
    assert readable["key_digest"] == k.digest and readable["N_runs"] == 10
    assert key(64, N_runs=7).describe() == "simulate(L=64, T=2.5, seed=None) [N_runs=7]"


def test_lambda_function_name_is_file_safe():
    k = call_key(lambda x: x, (1,), {}, N_runs=1)
    assert k.name == "_lambda_"


def test_keys_do_not_depend_on_the_process_or_its_hash_seed():
    code = (
        "import numpy as np\n"
        "from jobdb_helpers import simulate\n"
        "from parallelaverage.jobdb import call_key\n"
        "args = ({'b', 'a', 'c'}, {'z': 1, 'y': frozenset({'p', 'q'})})\n"
        "print(call_key(simulate, args, {'seed': np.arange(5)}, N_runs=3).digest)\n"
    )
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    digests = {
        run_python(f"import sys; sys.path.insert(0, {tests_dir!r})\n" + code, PYTHONHASHSEED=seed).stdout.strip()
        for seed in ("1", "2", "3")
    }
    expected = call_key(
        simulate, ({"b", "a", "c"}, {"z": 1, "y": frozenset({"p", "q"})}), {"seed": np.arange(5)}, N_runs=3
    ).digest
    assert digests == {expected}


@settings(database=None)  # no .hypothesis folder in the repository
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=10,
))
def test_plain_data_keys_are_stable_and_copy_equal(value):
    import copy

    assert key(value) == key(copy.deepcopy(value))


# ----------------------------------------------------------------- code_hash

def _compile(source: str, name: str = "f"):
    namespace: dict = {}
    exec(compile(source, "<test>", "exec"), namespace)
    return namespace[name]


def test_code_hash_ignores_position_and_docstring_but_sees_edits():
    base = _compile("def f(x):\n    return [y * 2 for y in range(x)]\n")
    moved = _compile("\n\n\n# a comment\ndef f(x):\n    'Doc.'\n    return [y * 2 for y in range(x)]\n")
    edited = _compile("def f(x):\n    return [y * 3 for y in range(x)]\n")
    inner_edit = _compile("def f(x):\n    return [y * 2 for y in range(x + 1)]\n")
    assert code_hash(base) == code_hash(moved)
    assert code_hash(base) != code_hash(edited)
    assert code_hash(base) != code_hash(inner_edit)


def test_code_hash_of_nested_function_change():
    a = _compile("def f():\n    def g():\n        return 1\n    return g\n")
    b = _compile("def f():\n    def g():\n        return 2\n    return g\n")
    assert code_hash(a) != code_hash(b)


def test_code_hash_does_not_depend_on_the_hash_seed():
    code = (
        "from parallelaverage.jobdb import code_hash\n"
        "def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta'}\n"
        "print(code_hash(f))\n"
    )
    assert len({run_python(code, PYTHONHASHSEED=seed).stdout for seed in ("1", "2", "3", "4")}) == 1


def test_code_hash_of_other_callables():
    assert code_hash(functools.partial(simulate, T=1.0)) == code_hash(simulate)
    assert len(code_hash(max)) == 64


# ------------------------------------------------------------- pinned digests

# Digests computed by the key scheme of KEY_VERSION 1 before numpy numbers, closures
# and methods joined the key: existing databases must keep finding these jobs.
PINNED_DIGESTS = [
    ("int", ((64,), {}, 10, "all"), "22b177b4c00d7039511c1e1ce8b2726ed5ec93fa75416faad3bfbbf88eeda050"),
    ("int_float_kw", ((64, 2.5), {"seed": 3}, 10, "all"),
     "5b89fade54c06a09350cefdfe8b2e003bc8b57b967f14a4e3ba461da4dadc5af"),
    ("big_negative_int", ((-(2**70),), {"T": float("nan")}, 1, "all"),
     "43eb259b3ad566e46cddfb2c72c8331ecec72f716213ee5f6e7da11149e85dec"),
    ("str_and_neg_zero", (("abc",), {"T": -0.0}, 5, "keep"),
     "f41201022c62e907ae472ce4e69bd833cfad27cb0aa7a2b6ace6ad91c0316e7a"),
    ("float_array", ((np.arange(5.0),), {}, 3, "all"),
     "f99f2710515e985fa1ab827917fe5a10b1c833e3970d6b29f97271bc915e828d"),
    ("f32_2d_strided", ((np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],), {}, (2, 3), [0, 2]),
     "bc60f890f3ce813ec2545aa509e065300a867001a1d30d29b89c8e7671f9ff16"),
    ("containers", (([1, 2.5, "x", (3, None, True)],), {"T": {"a": 1, "b": {2, 3}}}, 7, "all"),
     "78c7453c7b113e2537dcda107a86babc19fd31e84cb1375e4b1198b351223dd9"),
    ("int_array_kw", ((), {"L": np.arange(10, dtype=np.int32), "seed": None}, 100, "all"),
     "f47eafaf854c19eccda7e918067bda097dfffa191845ddb2a30a570f55b49206"),
    ("complex", ((1 + 2j,), {}, 10, "all"), "36136d6cb35e19c16f6d586124a9b7794d0b2dc46bb15a67fb9d640ca96f4d5e"),
    ("large_array", ((np.linspace(0, 1, 10**6),), {}, 10, "all"),
     "38eed73c29134d8d026d4cbd99cd9987ba212fad362bfce2e56b86370b1ef9a9"),
    ("bool_fortran", ((np.asfortranarray(np.eye(3, dtype=bool)),), {}, 10, "all"),
     "e38fc71015c6b4932ac6d891b0d2974d4a761a21eaf5b62c13036fbcd6f67aa8"),
]


@pytest.mark.parametrize("call, digest", [case[1:] for case in PINNED_DIGESTS], ids=[case[0] for case in PINNED_DIGESTS])
def test_digests_of_plain_calls_never_change(call, digest):
    args, kwargs, n_runs, average = call
    assert call_key(simulate, args, kwargs, N_runs=n_runs, average_results=average).digest == digest, (
        "the key of a plain call changed: existing job databases would no longer find their jobs. "
        "Keep the digests of plain int/float/str/array calls, or bump KEY_VERSION on purpose"
    )


# ------------------------------------------------------ closures in the call key

def _module(source: str, name: str = "user_code") -> dict:
    """Run ``source`` as the body of a module named ``name``; return its globals."""
    namespace: dict = {"__name__": name}
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), namespace)
    return namespace


FACTORY = """
    import threading
    def make(offset):
        def shifted(x):
            return x + offset
        return shifted
    def wrap(function):
        def wrapped(x):
            return function(x)
        return wrapped
    def double(x):
        return 2 * x
    def triple(x):
        return 3 * x
"""


def test_values_a_closure_captured_are_part_of_the_key():
    module = _module(FACTORY)
    make, wrap = module["make"], module["wrap"]

    def k(function, *args):
        return call_key(function, args, N_runs=4)

    assert k(make(5), 1) != k(make(6), 1)
    assert k(make(5), 1) == k(make(5), 1)
    assert k(make(np.int64(5)), 1) == k(make(5), 1)
    assert k(make(5), 1).call == "shifted(x=1)"  # captured values are identity, not arguments
    # a captured function counts by its code, not its pickle
    assert k(wrap(module["double"]), 1) == k(wrap(module["double"]), 1)
    assert k(wrap(module["double"]), 1) != k(wrap(module["triple"]), 1)
    with pytest.raises(ArgumentError, match=r"the value 'offset' captured by shifted\(\) cannot be stored"):
        k(make(threading.Lock()), 1)


def test_an_empty_cell_and_the_class_cell_of_super_are_keyed_quietly():
    from parallelaverage.jobdb.keys import _closure_tokens

    def outer():
        def early():
            return later

        key_before = call_key(early, (), N_runs=1)
        later = 1
        return key_before, call_key(early, (), N_runs=1)

    before, after = outer()
    assert before != after

    class Base:
        def run(self, x):
            return x

    class Model(Base):
        def run(self, x):
            return super().run(x)

    assert Model.run.__code__.co_freevars == ("__class__",)
    assert _closure_tokens(Model.run, "run") == {}


# ------------------------------------------------------------ code fingerprints

PROGRAM = """
    import numpy as np
    from numpy import exp
    import threading
    OFFSET = 7
    SCALE = 2.0
    TABLE = np.arange(10.0)
    LOCK = threading.Lock()
    def helper(x):
        return x * SCALE + TABLE[0]
    def simulate(x):
        y = [helper(v) for v in range(x)]  # read in nested code too
        return sum(y) + OFFSET + exp(0.0) + len(y) + np.pi
"""


def test_the_fingerprint_names_globals_and_user_functions_read():
    module = _module(PROGRAM)
    parts = code_fingerprint(module["simulate"])
    assert set(parts) == {
        "code", "global OFFSET", "global exp", "code of helper",
        "global SCALE (read by helper)", "global TABLE (read by helper)",
    }  # modules (np), builtins (sum, len, range) and attribute names left out
    assert all(len(digest) == 16 and int(digest, 16) >= 0 for digest in parts.values())
    assert code_hash(module["simulate"]) == _parts_digest(parts)
    again = _module(PROGRAM)
    assert code_fingerprint(again["simulate"]) == parts  # by content, not by object


def _parts_digest(parts):
    from parallelaverage.jobdb.keys import _parts_digest

    return _parts_digest(parts)


def test_changes_are_described_by_part():
    module = _module(PROGRAM)
    simulate = module["simulate"]
    before = code_fingerprint(simulate)
    module["OFFSET"] = 8
    assert describe_code_changes(before, code_fingerprint(simulate)) == ["global OFFSET changed"]
    module["OFFSET"] = 7
    assert code_fingerprint(simulate) == before
    exec("def helper(x):\n    return x * SCALE * 2\n", module)  # the user edits helper
    assert describe_code_changes(before, code_fingerprint(simulate)) == [
        "code of helper changed", "global TABLE (read by helper) removed",
    ]
    assert describe_code_changes({"code": "a"}, {"code": "b", "global NEW": "c"}) == [
        "code changed", "global NEW added",
    ]
    assert describe_code_changes(before, before) == []


def test_a_new_global_that_the_code_reads_is_added():
    module = _module("""
        def simulate(x):
            return x + NEW if x > 1e9 else x
    """)
    before = code_fingerprint(module["simulate"])
    module["NEW"] = 3
    assert describe_code_changes(before, code_fingerprint(module["simulate"])) == ["global NEW added"]


def test_values_changed_in_place_are_noticed():
    module = _module("""
        import numpy as np
        SMALL = np.zeros(100)
        LARGE = np.zeros(1_000_000)
        PARAMS = {"T": [2.5]}
        def simulate(x):
            return SMALL[0] + LARGE[0] + PARAMS["T"][0]
    """)
    simulate = module["simulate"]
    parts = code_fingerprint(simulate)
    module["SMALL"][37] = 1.0  # an array up to RECHECK_ARRAY_BYTES: re-hashed on every call
    module["PARAMS"]["T"].append(3.0)  # mutable values: re-hashed on every call
    module["LARGE"] += 1.0  # a large array: re-hashed when a sample of it changed
    assert describe_code_changes(parts, code_fingerprint(simulate)) == [
        "global LARGE changed", "global PARAMS changed", "global SMALL changed",
    ]
    parts = code_fingerprint(simulate)
    module["LARGE"].shape = (1000, 1000)
    assert describe_code_changes(parts, code_fingerprint(simulate)) == ["global LARGE changed"]


def test_a_global_that_cannot_be_hashed_counts_by_its_type():
    module = _module(PROGRAM)
    module["OFFSET"] = threading.Lock()
    parts = code_fingerprint(module["simulate"])
    assert "global OFFSET (not hashable: _thread.lock)" in parts and "global OFFSET" not in parts
    module["OFFSET"] = threading.Lock()  # another lock: the same type, no change
    assert code_fingerprint(module["simulate"]) == parts


def test_library_functions_count_by_name_and_user_modules_by_code(tmp_path, monkeypatch):
    import cloudpickle

    (tmp_path / "fp_helpers.py").write_text("SCALE = 3\ndef helper(x):\n    return SCALE * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fp_helpers

    source = "from fp_helpers import helper\ndef simulate(x):\n    return helper(x)\n"
    parts = code_fingerprint(_module(source)["simulate"])
    assert set(parts) == {"code", "global helper"}  # another module's: by its name
    cloudpickle.register_pickle_by_value(fp_helpers)
    try:
        parts = code_fingerprint(_module(source)["simulate"])
    finally:
        cloudpickle.unregister_pickle_by_value(fp_helpers)
    assert set(parts) == {"code", "code of helper", "global SCALE (read by helper)"}


def test_the_function_itself_and_recursion_end_the_walk():
    module = _module("""
        def even(n):
            return n == 0 or odd(n - 1)
        def odd(n):
            return n != 0 and even(n - 1)
        def simulate(n):
            return simulate(n - 1) if n else even(n)
    """)
    assert set(code_fingerprint(module["simulate"])) == {"code", "code of even", "code of odd (read by even)"}


def test_the_cache_notices_rebinding_and_new_code():
    module = _module(PROGRAM)
    simulate = module["simulate"]
    before = code_fingerprint(simulate)
    module["SCALE"] = 2.5
    assert describe_code_changes(before, code_fingerprint(simulate)) == ["global SCALE (read by helper) changed"]
    module["SCALE"] = 2.0
    module["helper"].__code__ = (lambda x: x).__code__
    assert describe_code_changes(before, code_fingerprint(simulate)) == ["code of helper changed",
                                                                          "global SCALE (read by helper) removed",
                                                                          "global TABLE (read by helper) removed"]


def test_code_changes_of_a_job_and_of_a_job_stored_before_fingerprints():
    from parallelaverage.jobdb.keys import _legacy_code_digest

    module = _module(PROGRAM)
    simulate = module["simulate"]
    stored_hash, stored_parts = code_hash(simulate), code_fingerprint(simulate)
    assert code_changes(simulate, stored_hash, stored_parts) == []
    module["OFFSET"] = 9
    assert code_changes(simulate, stored_hash, stored_parts) == ["global OFFSET changed"]
    # a record without parts: the code as checked then is unchanged, so no warning
    assert code_changes(simulate, _legacy_code_digest(simulate, simulate), {}) == []
    assert code_changes(simulate, "0" * 64, {}) == ["the code changed"]


def test_fingerprints_do_not_depend_on_the_process_or_its_hash_seed():
    code = (
        "import textwrap\n"
        "from parallelaverage.jobdb import code_fingerprint\n"
        "ns = {'__name__': 'user_code'}\n"
        "exec('WORDS = {\"alpha\", \"beta\", \"gamma\"}\\nTABLE = {\"b\": 1, \"a\": 2}\\n"
        "def helper(x):\\n    return x in WORDS\\n"
        "def f(x):\\n    return helper(x) and TABLE', ns)\n"
        "print(sorted(code_fingerprint(ns['f']).items()))\n"
    )
    outputs = {run_python(code, PYTHONHASHSEED=seed).stdout for seed in ("1", "2", "3")}
    assert len(outputs) == 1 and "global WORDS (read by helper)" in outputs.pop()


def test_instances_of_a_scripts_classes_key_the_same_in_every_process():
    # cloudpickle ships __main__'s classes by value with an id drawn in each process:
    # such objects are keyed by class name and state instead of by their pickle
    code = textwrap.dedent("""
        from parallelaverage.jobdb import call_key
        class Lattice:
            def __init__(self, L):
                self.L, self.tags = L, {"a", "b", "c"}
        class Model:
            def __init__(self, T):
                self.T, self.lattice = T, Lattice(8)
            def simulate(self, steps):
                return steps
        print(call_key(Model.simulate, (Model(2.5), 10), N_runs=3).digest)
        print(call_key(Model.simulate, (Model(2.6), 10), N_runs=3).digest)
        print(call_key(Model.simulate, (Model, 10), N_runs=3).digest)
    """)
    outputs = {run_python(code, PYTHONHASHSEED=seed).stdout for seed in ("1", "2", "3")}
    assert len(outputs) == 1
    digests = outputs.pop().split()
    assert len(set(digests)) == 3, "another state or a class is another call"
