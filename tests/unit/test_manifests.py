import pytest

from mesh.errors import ManifestError, ValidationError
from mesh.labels import parse_label_args
from mesh.manifests import load_documents, parse_documents, parse_yaml_text


def parse(text, source="m.yaml"):
    return parse_documents(parse_yaml_text(text, source))


GOOD = """
apiVersion: ostium.io/v1alpha1
kind: Endpoint
metadata: {name: web, namespace: prod, labels: {app: web, tier: front}}
spec:
  ip: 10.200.0.9
  command: ["python3", "-m", "http.server", "80"]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: production}}
"""


def test_multi_document_manifest_parses_into_typed_objects():
    items = parse(GOOD)
    assert [(i.kind, i.namespace, i.name) for i in items] == [("Endpoint", "prod", "web"), ("Namespace", "", "prod")]
    ep = items[0].obj
    assert ep.labels == {"app": "web", "tier": "front"}
    assert ep.ip == "10.200.0.9" and ep.command[0] == "python3" and ep.ports[0].port == 80
    assert items[1].obj.labels["kubernetes.io/metadata.name"] == "prod"


def test_string_command_runs_through_the_shell():
    items = parse("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a}\nspec: {command: 'sleep 1'}\n")
    assert items[0].obj.command == ("/bin/sh", "-c", "sleep 1")
    assert items[0].namespace == "default"


@pytest.mark.parametrize("text,expected", [
    ("apiVersion: v9\nkind: Pod\nmetadata: {name: a}\n", "m.yaml#1 (Pod a): kind: unknown kind v9/Pod"),
    ("kind: Endpoint\nmetadata: {name: a}\n", "m.yaml#1 (Endpoint a): apiVersion: missing apiVersion"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: Bad_Name}\n",
     "metadata.name: endpoint name 'Bad_Name'"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a, labels: {'bad key': x}}\n",
     "metadata.labels: label key 'bad key'"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a, labels: {app: 'no spaces'}}\n",
     "metadata.labels.app: label value 'no spaces'"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a, labels: {enabled: true}}\n",
     "value must be a string"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a}\nspec: {ip: 10.0.0.300}\n",
     "spec.ip: '10.0.0.300' is not an IP address"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a}\nspec: {color: red}\n",
     "spec.color: unknown field 'color'"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a}\nspec: {ports: [{name: http, port: 70000}]}\n",
     "spec.ports[0].port: must be an integer from 1 to 65535"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a, namespace: Prod}\n",
     "metadata.namespace: namespace 'Prod'"),
    ("apiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: a}\nspec: {command: []}\n",
     "spec.command: must be a string or a non-empty list"),
    ("- just\n- a list\n", "a manifest must be a mapping"),
])
def test_invalid_documents_name_the_document_and_the_field(text, expected):
    with pytest.raises(ValidationError) as exc:
        parse(text)
    assert expected in str(exc.value)


def test_yaml_syntax_error_names_file_and_line():
    with pytest.raises(ManifestError) as exc:
        parse("apiVersion: v1\nkind: [Namespace\n", "bad.yaml")
    assert "bad.yaml" in str(exc.value) and "line" in str(exc.value)


def test_one_bad_document_fails_the_whole_batch():
    text = GOOD + "---\napiVersion: ostium.io/v1alpha1\nkind: Endpoint\nmetadata: {name: BAD}\n"
    with pytest.raises(ValidationError, match="m.yaml#3"):
        parse(text)


def test_duplicate_objects_in_one_batch_are_rejected():
    text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n"
    with pytest.raises(ValidationError, match="defined twice"):
        parse(text)


def test_directories_are_read_recursively_in_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: one}\n")
    (tmp_path / "b" / "c.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: two}\n")
    (tmp_path / "notes.txt").write_text("ignored")
    docs = load_documents([str(tmp_path)])
    assert [d.body["metadata"]["name"] for d in docs] == ["one", "two"]


def test_missing_file_is_an_error():
    with pytest.raises(ManifestError, match="no such file"):
        load_documents(["/nonexistent.yaml"])


@pytest.mark.parametrize("arg,needle", [("novalue", "key=value"), ("Bad Key=x", "label key"),
                                         ("k=" + "v" * 64, "at most 63"), ("-k=v", "label key")])
def test_cli_label_arguments_are_validated(arg, needle):
    with pytest.raises(ValidationError, match=needle):
        parse_label_args([arg])


def test_cli_labels_with_prefix_and_empty_value():
    assert parse_label_args(["app.kubernetes.io/name=web", "flag="]) == {"app.kubernetes.io/name": "web", "flag": ""}
