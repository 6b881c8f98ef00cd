"""
Errors of the JSON API answer JSON when JSON was asked for, HTML otherwise
(issue 17, item 9).
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def dev(client, alice):
    assert client.request("PUT", "/alice/dev", {}, headers=alice).code == 200
    return alice


@pytest.mark.parametrize(
    "path",
    [
        "/alice/dev/nope",
        "/alice/dev/nope/1.0",
        "/alice/nope",
        "/nobody",
        "/nobody/dev",
        "/alice/dev/+f/abc/def/nope-1.0.tar.gz",
    ],
)
def test_a_missing_thing_answers_json_when_json_was_asked_for(client, dev, path):
    answer = client.get(path, accept="application/json")
    assert answer.code == 404, (path, answer.body)
    assert answer.header("content-type").startswith("application/json"), (path, answer.headers)
    assert json.loads(answer.body)["message"]
    html = client.get(path, accept="text/html")
    assert html.code == 404 and html.header("content-type").startswith("text/html")


def test_a_missing_simple_page_answers_json_to_a_json_installer(client, dev):
    accept = "application/vnd.pypi.simple.v1+json"
    answer = client.get("/alice/dev/+simple/nope/", accept=accept)
    assert answer.code == 404
    assert answer.header("content-type").startswith(("application/json", accept)), answer.headers
    assert json.loads(answer.body)["message"]
    answer = client.get("/nobody/dev/+simple/nope/", accept=accept)
    assert answer.code == 404 and json.loads(answer.body)["message"]
