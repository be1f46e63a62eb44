#!/usr/bin/env python3
"""Generates crates/protobuf/src/tags.rs: the Kubernetes protobuf field table.

Field numbers and wire types come from the prost-generated structs of the
`k8s-pb` crate (0.9.0); JSON field names, canonical message names and which
fields are required come from the `k8s-openapi` crate (0.29.0, v1_33) code.
Both crates are read from the local cargo registry, nothing is vendored.

Usage: python3 crates/protobuf/gen/gen_tags.py [K8S_PB_SRC K8S_OPENAPI_SRC]
"""

import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "src", "tags.rs")


def find_crate(name):
    pats = glob.glob(os.path.expanduser("~/.cargo/registry/src/*/%s/src" % name))
    if not pats:
        sys.exit("crate %s not found in ~/.cargo/registry/src" % name)
    return sorted(pats)[-1]


def norm(name):
    """Comparable form of a field name: no case, no separators."""
    if name.startswith("r#"):
        name = name[2:]
    return re.sub(r"[^a-z0-9]", "", name.lower())


def snake_to_camel(s):
    if s.startswith("r#"):
        s = s[2:]
    parts = s.split("_")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


# ---------------------------------------------------------------- k8s-openapi


def read_openapi(root):
    """definition name (without the io.k8s. prefix, '-' -> '_') -> info."""
    defs = {}
    for path in glob.glob(os.path.join(root, "v1_33", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        m = re.search(r"^// Generated from definition (\S+)", text, re.M)
        if not m:
            continue
        name = m.group(1)
        if not name.startswith("io.k8s."):
            continue
        key = name[len("io.k8s."):].replace("-", "_")
        json_names = {}
        for jm in re.finditer(r'"([^"]+)" => Field::Key_(\w+),', text):
            json_names[norm(jm.group(2))] = jm.group(1)
            json_names.setdefault(norm(jm.group(1)), jm.group(1))
        required = set()
        sm = re.search(r"pub struct \w+ \{(.*?)\n\}", text, re.S)
        if sm:
            for fm in re.finditer(r"^\s*pub (\w+): (.+),$", sm.group(1), re.M):
                if not fm.group(2).startswith("Option<"):
                    required.add(norm(fm.group(1)))
        res = None
        am = re.search(r'const API_VERSION: &\'static str = "([^"]*)";', text)
        km = re.search(r'const KIND: &\'static str = "([^"]*)";', text)
        if am and km:
            res = (am.group(1), km.group(1))
        defs[key] = {"name": name.rsplit(".", 1)[1], "json": json_names, "required": required, "resource": res}
    return defs


# ---------------------------------------------------------------- k8s-pb

ATTR = re.compile(r"^\s*#\[prost\((.*)\)\]\s*$")
STRUCT = re.compile(r"^pub struct (\w+) \{")
RESOURCE = re.compile(r"^impl crate::Resource for (\w+) \{")


def module_of(root, path):
    rel = os.path.relpath(os.path.dirname(path), root)
    return [] if rel == "." else rel.split(os.sep)


def resolve_type(modpath, ty):
    """Rust type path of a message -> (module path list, struct name)."""
    ty = ty.strip()
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while ty.startswith(wrapper):
            ty = ty[len(wrapper):-1].strip()
    parts = ty.split("::")
    mod = list(modpath)
    while parts and parts[0] == "super":
        mod.pop()
        parts.pop(0)
    if parts and parts[0] == "crate":
        mod = []
        parts.pop(0)
    return tuple(mod + parts[:-1]), parts[-1]


def read_pb(root):
    messages = {}  # (mod tuple, rust name) -> list of fields
    resources = []  # (api_version, kind, (mod, name))
    for path in sorted(glob.glob(os.path.join(root, "**", "mod.rs"), recursive=True)):
        modpath = module_of(root, path)
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        cur = None
        i = 0
        while i < len(lines):
            line = lines[i]
            sm = STRUCT.match(line)
            if sm:
                cur = (tuple(modpath), sm.group(1))
                messages[cur] = []
                i += 1
                continue
            if line.startswith("}"):
                cur = None
            rm = RESOURCE.match(line)
            if rm:
                body = []
                while not lines[i].startswith("}"):
                    body.append(lines[i])
                    i += 1
                body = "\n".join(body)
                av = re.search(r'const API_VERSION: &\'static str = "([^"]*)"', body).group(1)
                kind = re.search(r'const KIND: &\'static str = "([^"]*)"', body).group(1)
                resources.append((av, kind, (tuple(modpath), rm.group(1))))
                continue
            am = ATTR.match(line)
            if am and cur is not None:
                attr = am.group(1)
                decl = ""
                i += 1
                while True:
                    decl += " " + lines[i].strip()
                    if decl.rstrip().endswith(",") and decl.count("<") == decl.count(">"):
                        break
                    i += 1
                decl = re.sub(r"\s+", "", decl).replace(",>", ">")
                dm = re.match(r"pub(r#\w+|\w+):(.*),$", decl)
                if not dm:
                    sys.exit("cannot parse field %r in %s" % (decl, path))
                messages[cur].append(parse_field(modpath, attr, dm.group(1), dm.group(2)))
            i += 1
    return messages, resources


def parse_field(modpath, attr, name, ty):
    tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
    repeated = ", repeated" in attr
    mm = re.match(r'(?:btree_)?map = "(\w+), (\w+)"', attr)
    if mm:
        key, val = mm.group(1), mm.group(2)
        if key != "string":
            sys.exit("unsupported map key %s" % key)
        if val == "message":
            inner = re.search(r"BTreeMap<[^,]+,(.*)>$", ty).group(1)
            return {"tag": tag, "name": name, "kind": ("map_msg", resolve_type(modpath, inner)), "rep": False}
        return {"tag": tag, "name": name, "kind": ("map_" + val,), "rep": False}
    kind = attr.split(",")[0].strip()
    if kind.startswith("bytes"):
        kind = "bytes"
    if kind == "message":
        return {"tag": tag, "name": name, "kind": ("msg", resolve_type(modpath, ty)), "rep": repeated}
    if kind not in ("string", "int32", "int64", "bool", "double", "bytes"):
        sys.exit("unsupported prost kind %s" % attr)
    return {"tag": tag, "name": name, "kind": (kind,), "rep": repeated}


# ---------------------------------------------------------------- naming

# Messages whose JSON form is not an object (handled by the decoder).
SPECIAL = {
    "apimachinery.pkg.apis.meta.v1.Time": "Time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "MicroTime",
    "apimachinery.pkg.apis.meta.v1.Duration": "Duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "RawJson",
    "apimachinery.pkg.runtime.RawExtension": "RawJson",
    "apimachinery.pkg.util.intstr.IntOrString": "IntOrString",
    "apimachinery.pkg.api.resource.Quantity": "Quantity",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSON": "RawJson",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.JSON": "RawJson",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrArray": "SchemaOrArray",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.JSONSchemaPropsOrArray": "SchemaOrArray",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrBool": "SchemaOrBool",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.JSONSchemaPropsOrBool": "SchemaOrBool",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaPropsOrStringArray": "SchemaOrStringArray",
    "apiextensions_apiserver.pkg.apis.apiextensions.v1beta1.JSONSchemaPropsOrStringArray": "SchemaOrStringArray",
}

# Proto field names whose JSON name is not a case variant of them.
ALIASES = {"ref": "$ref", "schema": "$schema"}

# Optional string fields that are Go pointers, where "" differs from unset.
KEEP_EMPTY_STRING = {"storageClassName"}

# Optional int/bool fields that are plain (non-pointer, `omitempty`) Go values:
# protobuf always carries them, JSON leaves them out when zero. Pointer fields
# (Deployment replicas, *bool security settings, ...) must not be listed: their
# zero value means something. Optional ints/bools of *Status messages are
# treated the same way (the server owns status).
OMIT_ZERO = {
    "ObjectMeta": {"generation"},
    "ContainerPort": {"hostPort"},
    "ServicePort": {"nodePort"},
    "ServiceSpec": {"healthCheckNodePort", "publishNotReadyAddresses"},
    "Container": {"stdin", "stdinOnce", "tty"},
    "EphemeralContainerCommon": {"stdin", "stdinOnce", "tty"},
    "PodSpec": {"hostNetwork", "hostPID", "hostIPC"},
    "DeploymentSpec": {"minReadySeconds", "paused"},
    "ReplicaSetSpec": {"minReadySeconds"},
    "StatefulSetSpec": {"minReadySeconds"},
    "DaemonSetSpec": {"minReadySeconds"},
    "Probe": {"initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"},
    "VolumeMount": {"readOnly"},
    "PersistentVolumeClaimVolumeSource": {"readOnly"},
    "ServiceBackendPort": {"number"},
    "PriorityClass": {"globalDefault"},
    "Event": {"count"},
    "Condition": {"observedGeneration"},
}

# Go slice types that travel as a message with one repeated `items` field.
STRING_LISTS = {"ExtraValue", "Verbs", "OptionalNames"}


def main():
    pb_root = sys.argv[1] if len(sys.argv) > 2 else find_crate("k8s-pb-0.9.0")
    oa_root = sys.argv[2] if len(sys.argv) > 2 else find_crate("k8s-openapi-0.29.0")
    defs = read_openapi(oa_root)
    messages, resources = read_pb(pb_root)

    # Canonical (upstream) message names: the openapi definition name when the
    # prost name matches it case-insensitively (prost turns `PodIP` into `PodIp`).
    defs_by_lower = {}
    for key, d in defs.items():
        if "." not in key:
            continue
        pkg, name = key.rsplit(".", 1)
        defs_by_lower[(pkg, name.lower())] = key
    full = {}
    info = {}
    for (mod, rust) in messages:
        pkg = ".".join(mod)
        key = defs_by_lower.get((pkg, rust.lower()))
        name = key.rsplit(".", 1)[1] if key else rust
        full[(mod, rust)] = "k8s.io.%s.%s" % (pkg, name)
        info[(mod, rust)] = defs.get(key) if key else None

    # JSON spellings of every field name of every definition: messages that have no
    # OpenAPI definition of their own (Go structs inlined into another, e.g.
    # VolumeSource into Volume) take their field names from there (`downwardAPI`,
    # `scaleIO`), when the spelling is unambiguous.
    spellings = {}
    for d in defs.values():
        for n, j in d["json"].items():
            if norm(j) == n:
                spellings.setdefault(n, set()).add(j)
    known_json = {n: next(iter(js)) for n, js in spellings.items() if len(js) == 1}

    def spelling_for(snake):
        """The known spelling of a prost field name, if its word boundaries agree
        (prost's `sub_resource` is `subResource`, never the known `subresource`)."""
        plain = snake[2:] if snake.startswith("r#") else snake
        j = known_json.get(norm(plain))
        if j is None:
            return None
        pos = 0
        for part in plain.split("_")[:-1]:
            pos += len(part)
            if pos >= len(j) or not j[pos].isupper():
                return None
        return j

    order = sorted(messages, key=lambda k: full[k])
    index = {k: i for i, k in enumerate(order)}
    unmatched = []

    def kind_code(mod_rust_key, k):
        if k[0] == "msg" or k[0] == "map_msg":
            target = k[1]
            if target not in messages:
                sys.exit("unknown message %s" % (target,))
            short = full[target][len("k8s.io."):]
            special = SPECIAL.get(short)
            if special and special.startswith("Schema"):
                props = (target[0], "JsonSchemaProps")
                inner = "K::%s(%d)" % (special, index[props])
            elif special:
                inner = "K::%s" % special
            elif target[1] in STRING_LISTS and [f["name"] for f in messages[target]] == ["items"]:
                inner = "K::StringList"
            else:
                inner = "K::Msg(%d)" % index[target]
            if k[0] == "map_msg":
                return "K::Map(&%s)" % inner
            return inner
        return {
            "string": "K::Str",
            "int32": "K::I32",
            "int64": "K::I64",
            "bool": "K::Bool",
            "double": "K::Double",
            "bytes": "K::Bytes",
            "map_string": "K::Map(&K::Str)",
            "map_bytes": "K::Map(&K::Bytes)",
        }[k[0]]

    out = []
    out.append("// @generated by crates/protobuf/gen/gen_tags.py from the field numbers of the")
    out.append("// k8s-pb 0.9.0 crate and the JSON names of the k8s-openapi 0.29.0 crate (v1_33).")
    out.append("// Do not edit: rerun `python3 crates/protobuf/gen/gen_tags.py`.")
    out.append("")
    out.append("use crate::table::{Field as F, Kind as K, Message as M, Resource as R};")
    out.append("")
    out.append("/// Every message, sorted by full proto name; `K::Msg(i)` indexes this slice.")
    out.append("pub(crate) static MESSAGES: &[M] = &[")
    for key in order:
        d = info[key]
        fields = []
        for f in sorted(messages[key], key=lambda f: f["tag"]):
            n = norm(f["name"])
            plain = f["name"][2:] if f["name"].startswith("r#") else f["name"]
            json = None
            inline = False
            if d:
                json = d["json"].get(n) or d["json"].get(norm(ALIASES.get(plain, "")))
                if json is None and f["kind"][0] == "msg" and not f["rep"]:
                    sub = messages[f["kind"][1]]
                    inline = bool(sub) and (
                        all(norm(g["name"]) in d["json"] for g in sub)
                        or n == norm(f["kind"][1][1])  # Go embedded struct: field named after its type
                    )
                if json is None and not inline:
                    unmatched.append("%s.%s" % (full[key], f["name"]))
            if json is None and not d:
                json = spelling_for(f["name"])
            if json is None:
                json = snake_to_camel(f["name"])
            required = bool(d) and norm(json) in d["required"]
            flags = 0
            if f["rep"]:
                flags |= 1
            if f["kind"] == ("string",) and not f["rep"] and not required and json not in KEEP_EMPTY_STRING:
                flags |= 2  # omit when empty
            simple = full[key].rsplit(".", 1)[1]
            zero_ok = json in OMIT_ZERO.get(simple, ()) or (simple.endswith("Status") and not required)
            if zero_ok and f["kind"][0] in ("int32", "int64", "bool") and not f["rep"]:
                flags |= 8  # omit when zero / false
            if inline:
                flags |= 4  # fields go into the parent object (Go `json:",inline"`)
            fields.append('F(%d, "%s", %s, %d)' % (f["tag"], json, kind_code(key, f["kind"]), flags))
        out.append('    M("%s", &[%s]),' % (full[key], ", ".join(fields)))
    out.append("];")
    out.append("")
    out.append("/// (apiVersion, kind, index into MESSAGES) of every top-level resource.")
    out.append("pub(crate) static RESOURCES: &[R] = &[")
    seen = set()
    for key in order:
        d = info[key]
        if d and d["resource"]:
            resources.append((d["resource"][0], d["resource"][1], key))
    for av, kind, key in sorted(resources, key=lambda r: (r[0], r[1])):
        if (av, kind) in seen:
            continue
        seen.add((av, kind))
        out.append('    R("%s", "%s", %d),' % (av, kind, index[key]))
    out.append("];")
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    for u in unmatched:
        print("no JSON name in k8s-openapi for %s" % u, file=sys.stderr)
    print("wrote %d messages, %d resources to %s" % (len(order), len(seen), OUT), file=sys.stderr)


if __name__ == "__main__":
    main()
