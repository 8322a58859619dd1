"""Offline stand-in for CloudFormation's "Circular dependency between resources" check.

`sam validate --lint` and `cfn-lint` both pass a template whose *transformed* resources depend on
each other in a cycle (e.g. a function whose HttpApi event makes it depend on the API while the
API's OpenAPI body references the function's ARN); CloudFormation only rejects it at deploy time.
This script transforms infra/template.yaml the way `sam deploy` does (local CodeUri and
DefinitionUri become S3 locations first, as `sam package` makes them), builds the dependency graph
of the resulting resources (Ref, Fn::GetAtt, Fn::Sub references and DependsOn) and fails, naming
the cycle, if there is one.

Usage: python scripts/template_cycles.py infra/template.yaml
"""

import os
import re
import sys

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

PARAMS = {
    "AWS::Region": "us-east-1",
    "AWS::Partition": "aws",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "tokenops",
}
SUB_REF = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z0-9.]+)?\}")


class NoManagedPolicies:
    """The translator asks for AWS managed policy ARNs only for names it does not know."""

    def load(self):
        return {}


def packaged(template):
    """What `sam package` leaves for CloudFormation: every local artifact path is an S3 URI."""
    for section in (template.get("Globals", {}).get("Function", {}),) + tuple(
        r.get("Properties", {}) for r in template["Resources"].values()
    ):
        for key in ("CodeUri", "DefinitionUri"):
            if isinstance(section.get(key), str) and not section[key].startswith("s3://"):
                section[key] = "s3://artifacts/" + key.lower()
    return template


def references(node, names, found):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and value in names:
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else value.split(".")[0]
                if target in names:
                    found.add(target)
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found.update(n for n in SUB_REF.findall(text) if n in names)
                if isinstance(value, list) and len(value) > 1:
                    references(value[1], names, found)
            else:
                references(value, names, found)
    elif isinstance(node, list):
        for value in node:
            references(value, names, found)
    return found


def find_cycle(graph):
    """One cycle as a list of resource names, or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[child] == 1:
                return path[path.index(child):] + [child]
            elif colour[child] == 0:
                colour[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def main(path):
    # The translator's boto session needs a region even though nothing is called.
    os.environ.setdefault("AWS_DEFAULT_REGION", PARAMS["AWS::Region"])
    with open(path, encoding="utf-8") as f:
        template = packaged(yaml_parse(f.read()))
    resources = transform(template, PARAMS, NoManagedPolicies())["Resources"]
    names = set(resources)
    graph = {}
    for name, resource in resources.items():
        deps = references(resource.get("Properties", {}), names, set())
        depends_on = resource.get("DependsOn", [])
        deps.update([depends_on] if isinstance(depends_on, str) else depends_on)
        graph[name] = deps
    cycle = find_cycle(graph)
    if cycle:
        print(f"{path}: circular dependency after the SAM transform: {' -> '.join(cycle)}")
        return 1
    edges = sum(len(d) for d in graph.values())
    print(f"{path}: {len(resources)} resources after the SAM transform, {edges} dependencies, no cycle")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
