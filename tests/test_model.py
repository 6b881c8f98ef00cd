"""
The domain rules, as plain function calls over a storage transaction.
"""

from __future__ import annotations

import pytest
from zope.interface.verify import verifyObject

from devpi_tx.customizers import MirrorCustomizer, StageCustomizer, default_registry
from devpi_tx.interfaces import IStageCustomizer
from devpi_tx.model import indexes, users, values
from devpi_tx.model.acl import Identity, Policy, parse_restrict_modify
from devpi_tx.model.errors import Conflict, Forbidden, InvalidInput, NotFound
from devpi_tx.model.names import check_indexname, check_username
from devpi_tx.storage.sqlite import SQLiteStorage


@pytest.fixture
def storage(tmp_path):
    s = SQLiteStorage(str(tmp_path / "state.sqlite"))
    with s.transaction() as tx:
        users.create_user(tx, "root", {}, "$argon2id$fake")
        users.create_user(tx, "alice", {"email": "a@example.com"}, "$argon2id$fake")
    yield s
    s.close()


REGISTRY = default_registry("http://127.0.0.1:9/simple/")


def create(storage, user, index, data):
    with storage.transaction() as tx:
        return indexes.create_index(tx, REGISTRY, user, index, data)


def modify(storage, user, index, data, **kw):
    with storage.transaction() as tx:
        return indexes.modify_index(tx, REGISTRY, user, index, data, **kw)


# -- names and values ---------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "a.b-c_d@e", "ümlaut", "x1"])
def test_good_names(name):
    assert check_username(name) == name


@pytest.mark.parametrize("name", ["", "a b", "a/b", "+api", "a:b", "a\x00", "a%b", "a~"])
def test_bad_names(name):
    with pytest.raises(InvalidInput, match="contains characters that aren't allowed"):
        check_indexname(name)


@pytest.mark.parametrize(
    "given, parsed",
    [(True, True), (False, False), ("yes", True), ("No", False), ("TRUE", True), ("false", False)],
)
def test_booleans(given, parsed):
    assert values.parse_bool(given) is parsed


@pytest.mark.parametrize("given", ["maybe", 1, 0, None, "1", ""])
def test_bad_booleans(given):
    with pytest.raises(InvalidInput, match="Unknown boolean value"):
        values.parse_bool(given)


def test_lists_from_strings_and_lists():
    assert values.parse_list(" a, b ,,a") == ["a", "b"]
    assert values.parse_list(["x", " y "]) == ["x", "y"]
    with pytest.raises(InvalidInput):
        values.parse_list(5)


def test_acl_specials_upper_cased():
    assert values.parse_acl(":anonymous:,bob,:authenticated:") == [
        ":ANONYMOUS:",
        "bob",
        ":AUTHENTICATED:",
    ]


def test_whitelist_names_normalised():
    assert values.parse_whitelist("Foo_Bar,*") == ["foo-bar", "*"]


def test_customizers_provide_interface():
    for customizer in (StageCustomizer(), MirrorCustomizer()):
        assert verifyObject(IStageCustomizer, customizer)


# -- indexes ------------------------------------------------------------------


def test_stage_defaults(storage):
    config = create(storage, "alice", "dev", {})
    assert config == {
        "type": "stage",
        "bases": [],
        "volatile": True,
        "acl_upload": ["alice"],
        "acl_toxresult_upload": [":ANONYMOUS:"],
        "mirror_whitelist": [],
        "mirror_whitelist_inheritance": "intersection",
    }


def test_create_parses_values(storage):
    create(storage, "alice", "base", {})
    config = create(
        storage,
        "alice",
        "dev",
        {"bases": "alice/base", "volatile": "no", "acl_upload": "alice,:authenticated:"},
    )
    assert config["bases"] == ["alice/base"]
    assert config["volatile"] is False
    assert config["acl_upload"] == ["alice", ":AUTHENTICATED:"]


def test_create_existing_index_conflicts(storage):
    create(storage, "alice", "dev", {})
    with pytest.raises(Conflict, match="index 'alice/dev' exists"):
        create(storage, "alice", "dev", {})


def test_unknown_key_named(storage):
    with pytest.raises(InvalidInput, match="unexpected keyword arguments: foo=1"):
        create(storage, "alice", "dev", {"foo": 1})
    assert indexes.get_index(storage, "alice", "dev") is None


def test_unknown_type(storage):
    with pytest.raises(InvalidInput, match="unknown index type 'weird'"):
        create(storage, "alice", "dev", {"type": "weird"})


def test_missing_base(storage):
    with pytest.raises(InvalidInput, match="base index 'root/nonexist' does not exist"):
        create(storage, "alice", "dev", {"bases": ["root/nonexist"]})


def test_base_loop_refused_and_state_unchanged(storage):
    create(storage, "alice", "a", {})
    create(storage, "alice", "b", {"bases": "alice/a"})
    create(storage, "alice", "c", {"bases": "alice/b"})
    serial = storage.serial
    with pytest.raises(InvalidInput, match="loop: alice/a -> alice/c -> alice/b -> alice/a"):
        modify(storage, "alice", "a", {"bases": ["alice/c"]})
    with pytest.raises(InvalidInput, match="own base"):
        modify(storage, "alice", "a", ["bases=alice/a"])
    assert storage.serial == serial
    assert indexes.get_index(storage, "alice", "a")["bases"] == []


def test_mirror_index(storage):
    config = create(storage, "root", "m", {"type": "mirror", "mirror_url": "http://127.0.0.1:1/simple/"})
    assert config == {"type": "mirror", "volatile": True, "mirror_url": "http://127.0.0.1:1/simple/"}
    with pytest.raises(InvalidInput, match="'mirror_url' option must be a URL."):
        modify(storage, "root", "m", {"mirror_url": "ftp://x"})
    with pytest.raises(InvalidInput, match="'mirror_cache_expiry' option must be an integer"):
        modify(storage, "root", "m", ["mirror_cache_expiry=soon"])
    # Keys of private indexes are silently dropped for mirrors.
    assert "bases" not in modify(storage, "root", "m", {"bases": "x", "title": "M"})


def test_patch_list_form(storage):
    create(storage, "alice", "dev", {"mirror_whitelist": "upkg"})
    config = modify(
        storage,
        "alice",
        "dev",
        ["acl_upload+=bob", "mirror_whitelist-=upkg", "title=Dev index", "custom_data=anything"],
    )
    assert config["acl_upload"] == ["alice", "bob"]
    assert config["mirror_whitelist"] == []
    assert config["title"] == "Dev index"
    assert config["custom_data"] == "anything"
    assert modify(storage, "alice", "dev", ["acl_upload+=bob"])["acl_upload"] == ["alice", "bob"]
    assert "title" not in modify(storage, "alice", "dev", ["title-="])


@pytest.mark.parametrize(
    "operation, message",
    [
        ("acl_upload-=carol", "doesn't have value 'carol'"),
        ("volatile-=", "Default values can't be removed."),
        ("bogus=1", "unexpected keyword arguments: bogus=1"),
        ("volatile=maybe", "Unknown boolean value"),
        ("type=mirror", "can't be changed"),
        ("noequals", "expected key=value"),
    ],
)
def test_patch_list_errors(storage, operation, message):
    create(storage, "alice", "dev", {})
    serial = storage.serial
    with pytest.raises(InvalidInput, match=message):
        modify(storage, "alice", "dev", [operation])
    assert storage.serial == serial


def test_patch_object_form_and_envelope(storage):
    create(storage, "alice", "dev", {})
    config = modify(storage, "alice", "dev", {"type": "indexconfig", "result": {"volatile": False}})
    assert config["volatile"] is False
    assert config["acl_upload"] == ["alice"]
    with pytest.raises(InvalidInput, match="no changes"):
        modify(storage, "alice", "dev", {"volatile": False}, error_on_noop=True)


def test_delete_index_rules(storage):
    create(storage, "alice", "dev", {"volatile": False})
    with pytest.raises(Forbidden, match="non-volatile, cannot delete"):
        with storage.transaction() as tx:
            indexes.delete_index(tx, "alice", "dev")
    modify(storage, "alice", "dev", ["volatile=True"])
    with storage.transaction() as tx:
        indexes.delete_index(tx, "alice", "dev")
    assert indexes.get_index(storage, "alice", "dev") is None
    with pytest.raises(NotFound):
        with storage.transaction() as tx:
            indexes.delete_index(tx, "alice", "dev")


# -- users --------------------------------------------------------------------


def test_user_create_validation(storage):
    with pytest.raises(Conflict, match="user already exists"):
        users.validate_create(storage, "alice", {"password": "x"})
    with pytest.raises(InvalidInput, match="password needs to be set"):
        users.validate_create(storage, "bob", {"email": "b@x"})
    with pytest.raises(InvalidInput, match="Unknown keys in user config: foo"):
        users.validate_create(storage, "bob", {"password": "x", "foo": 1})
    fields = users.validate_create(storage, "bob", {"password": "x", "title": "Bob", "created": "z"})
    assert fields == {"title": "Bob"}


def test_user_patch_plan():
    record = {"username": "alice", "email": "a@x", "title": "A", "pwhash": "$h"}
    changes, password, password_only = users.plan_modify(
        record, {"email": "a@x", "title": "", "password": "new", "created": "x", "modified": "y"}
    )
    assert changes == {"title": None}
    assert password == "new" and not password_only
    changes, password, password_only = users.plan_modify(
        record, {"email": "a@x", "title": "A", "password": "new"}
    )
    assert (changes, password_only) == ({}, True)


@pytest.mark.parametrize(
    "field, value, kind",
    [
        ("email", ["a@x"], "a list"),
        ("email", True, "a boolean"),
        ("title", 1, "a number"),
        ("description", {"text": "d"}, "an object"),
        ("password", 7, "a number"),
        ("password", ["pw"], "a list"),
    ],
)
def test_user_field_types(storage, field, value, kind):
    message = f"^{field} must be a string, got {kind}$"
    with pytest.raises(InvalidInput, match=message):
        users.validate_create(storage, "bob", {"password": "x", field: value})
    with pytest.raises(InvalidInput, match=message):
        users.plan_modify(users.get_user(storage, "alice"), {field: value})


def test_user_custom_data_is_any_json_and_falsy_strings_remove_fields(storage):
    record = users.get_user(storage, "alice")
    for value in ({"team": ["a", 1]}, [1, 2], 3, True, "x"):
        changes, _, _ = users.plan_modify(record, {"custom_data": value})
        assert changes == {"custom_data": value}
    fields = users.validate_create(storage, "bob", {"password": "x", "custom_data": {"k": [None]}})
    assert fields == {"custom_data": {"k": [None]}}
    for value in (None, ""):
        changes, _, _ = users.plan_modify(record, {"email": value, "title": value})
        assert changes == {"email": None}


def test_user_unknown_keys_refused_on_create_and_modify(storage):
    record = users.get_user(storage, "alice")
    for data in ({"nope": 1}, {"title": "A", "zz": 1, "nope": 2}):
        with pytest.raises(InvalidInput, match=r"^Unknown keys in user config: nope(, zz)?$"):
            users.plan_modify(record, data)
        with pytest.raises(InvalidInput, match=r"^Unknown keys in user config: nope(, zz)?$"):
            users.validate_create(storage, "bob", {"password": "x", **data})
    # Shown on one line, and not too much of them.
    with pytest.raises(InvalidInput) as info:
        users.plan_modify(record, {"a\nb": 1, "x" * 5000: 1, **{f"k{i:02}": 1 for i in range(20)}})
    assert "\n" not in info.value.message and len(info.value.message) < 300
    assert "(and 12 more)" in info.value.message
    # What the server sets is ignored, as devpi-client sends the record back.
    shown = users.public_user(record)
    changes, _, _ = users.plan_modify(record, dict(shown, title="T"))
    assert changes == {"title": "T"}


def test_user_delete_refused_with_non_volatile_index(storage):
    create(storage, "alice", "stable", {"volatile": False})
    with pytest.raises(Forbidden, match="non-volatile index: stable"):
        with storage.transaction() as tx:
            users.delete_user(tx, "alice")
    assert users.get_user(storage, "alice") is not None


def test_public_user_hides_password_hash(storage):
    shown = users.public_user(users.get_user(storage, "alice"))
    assert "pwhash" not in shown
    assert shown["username"] == "alice"


# -- ACLs ---------------------------------------------------------------------

ANON = Identity()
ALICE = Identity("alice")
ROOT = Identity("root")
ADMIN = Identity("carol", ("admins",))


def test_default_policy():
    policy = Policy()
    assert policy.may_create_user(ANON)
    assert policy.may_modify_user(ALICE, "alice") and not policy.may_modify_user(ALICE, "bob")
    assert policy.may_modify_user(ROOT, "bob")
    assert policy.may_create_index(ALICE, "alice") and not policy.may_create_index(ANON, "alice")
    assert not policy.may_delete_user(ROOT, "root")
    assert policy.may_delete_user(ALICE, "alice")


def test_restricted_policy():
    policy = Policy(parse_restrict_modify("root,:admins"))
    assert not policy.may_create_user(ANON)
    assert policy.may_create_user(ADMIN)
    assert not policy.may_create_index(ALICE, "alice")
    assert policy.may_create_index(ADMIN, "alice")
    assert policy.may_change_password(ALICE, "alice")
    assert not policy.may_modify_user(ALICE, "alice")
    assert not policy.may_delete_user(ADMIN, "carol")


def test_upload_acl():
    policy = Policy()
    assert policy.may_upload(ALICE, ["alice"])
    assert policy.may_upload(ALICE, [":AUTHENTICATED:"])
    assert not policy.may_upload(ANON, [":AUTHENTICATED:"])
    assert policy.may_upload(ANON, [":ANONYMOUS:"])
