import pytest

from podnet.cli.cmd_get import label_filter
from podnet.errors import ValidationError


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app!=web", {"app": "web"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("app in (web, db),tier notin (front)", {"app": "db", "tier": "back"}, True),
        ("app in (web, db),tier notin (front)", {"app": "db", "tier": "front"}, False),
        ("a=1, b=2", {"a": "1", "b": "2"}, True),
        ("a=1,b=2", {"a": "1"}, False),
        ("", {}, True),
    ],
)
def test_kubectl_selector_syntax(selector, labels, expected):
    assert label_filter(selector)(labels) is expected


def test_garbage_is_an_error():
    with pytest.raises(ValidationError):
        label_filter("a=(")
