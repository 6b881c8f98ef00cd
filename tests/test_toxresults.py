"""
The shape of a tox result (L{devpi_tx.model.toxresults}): what tox 3 and
tox 4 write with C{--result-json} passes, anything else is refused with a
message naming what is wrong.
"""

from __future__ import annotations

import pytest

from devpi_tx.model import toxresults
from devpi_tx.model.errors import InvalidInput, TooLarge

#: What tox 3's ResultLog writes (exit codes as strings).
TOX3 = {
    "reportversion": "1",
    "toxversion": "3.28.0",
    "platform": "linux",
    "host": "builder.example",
    "commands": [],
    "installpkg": {"md5": "0" * 32, "sha256": "1" * 64, "basename": "pkg_a-1.0.tar.gz"},
    "testenvs": {
        "py311": {
            "name": "py311",
            "setup": [{"command": ["/t/py311/bin/pip", "install", "pkg-a"], "output": "", "retcode": "0"}],
            "test": [{"command": ["/t/py311/bin/pytest"], "output": "1 passed", "retcode": "0"}],
            "python": {"executable": "/t/py311/bin/python", "version_info": [3, 11, 4, "final", 0]},
            "installed_packages": ["pkg-a==1.0", "pytest==7.4.0"],
            "installpkg": {"md5": "0" * 32, "sha256": "1" * 64, "basename": "pkg_a-1.0.tar.gz"},
        }
    },
}

#: What tox 4's Journal writes (exit codes as numbers, stderr, timings).
TOX4 = {
    "reportversion": "1",
    "toxversion": "4.11.3",
    "platform": "linux",
    "host": "builder.example",
    "testenvs": {
        ".pkg": {"setup": []},
        "py311": {
            "python": {
                "implementation": "CPython",
                "version_info": [3, 11, 4, "final", 0],
                "version": "3.11.4",
                "is_64": True,
                "sysplatform": "linux",
                "extra_version_info": None,
            },
            "installpkg": {"type": "wheel", "basename": "pkg_a-1.0-py3-none-any.whl", "sha256": "1" * 64},
            "installed_packages": ["pkg-a @ file:///tmp/pkg_a-1.0-py3-none-any.whl"],
            "result": {"success": True, "exit_code": 0, "duration": 1.5},
            "test": [
                {
                    "command": ["pytest"],
                    "output": "1 passed",
                    "err": "",
                    "retcode": 0,
                    "elapsed": 1.0,
                    "show_on_standard": False,
                    "run_id": "commands[0]",
                    "start": 1.0,
                    "end": 2.0,
                }
            ],
        },
    },
}


@pytest.mark.parametrize("data", [TOX3, TOX4, {"testenvs": {}}, {"testenvs": {"py": {"plugin": [1]}}}])
def test_what_tox_writes_passes(data):
    toxresults.check_toxresult(data)


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "tox result must be a JSON object, got a list"),
        ("x", "tox result must be a JSON object, got a string"),
        (None, "tox result must be a JSON object, got null"),
        ({}, "tox result has no 'testenvs'"),
        ({"testenvs": []}, "tox result: 'testenvs' must be an object, got a list"),
        ({"testenvs": None}, "tox result: 'testenvs' must be an object, got null"),
        ({"testenvs": {}, "toxversion": 4}, "tox result: 'toxversion' must be a string, got a number"),
        ({"testenvs": {}, "host": ["a"]}, "tox result: 'host' must be a string, got a list"),
        ({"testenvs": {}, "installpkg": "x"}, "tox result: 'installpkg' must be an object, got a string"),
        ({"testenvs": {"py": 1}}, "tox result: testenvs['py'] must be an object, got a number"),
        ({"testenvs": {"py": {"test": {}}}}, "testenvs['py']['test'] must be a list, got an object"),
        ({"testenvs": {"py": {"python": "3"}}}, "tox result: testenvs['py']['python'] must be an object"),
        ({"testenvs": {"py": {"result": True}}}, "testenvs['py']['result'] must be an object, got a boolean"),
        ({"testenvs": {"py": {"setup": [7]}}}, "testenvs['py']['setup'][0] must be an object, got a number"),
        (
            {"testenvs": {"py": {"test": [{"retcode": 0}, {"retcode": []}]}}},
            "testenvs['py']['test'][1]['retcode'] must be a number or a string, got a list",
        ),
        (
            {"testenvs": {"py": {"test": [{"retcode": True}]}}},
            "['retcode'] must be a number or a string, got a boolean",
        ),
        ({"testenvs": {"py": {"test": [{"output": 1}]}}}, "['output'] must be a string, got a number"),
    ],
)
def test_malformed_results_are_refused(data, message):
    with pytest.raises(InvalidInput) as info:
        toxresults.check_toxresult(data)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_long_environment_names_are_shortened_in_messages():
    name = "py\n" + "x" * 1000
    with pytest.raises(InvalidInput) as info:
        toxresults.check_toxresult({"testenvs": {name: []}})
    assert "\n" not in info.value.message
    assert len(info.value.message) < 150


def test_size_cap():
    toxresults.check_size(toxresults.MAX_SIZE)
    with pytest.raises(TooLarge, match="tox result too large: 11 bytes, the limit is 10 bytes"):
        toxresults.check_size(11, 10)
    with pytest.raises(TooLarge):
        toxresults.check_size(toxresults.MAX_SIZE + 1)
