#!/usr/bin/env python3
"""Runs the same Cloud Map API cases with boto3 against cloudmap-dns and against moto's server mode,
and reports every place where the two disagree.

The differences expected (places where moto departs from AWS's documentation and cloudmap-dns
follows AWS) are listed in expected_differences.json. Exit status 1 if any difference is not on the
list, or a listed one no longer shows, so the list stays true.

Usage: compat.py --ours http://127.0.0.1:PORT [--expected FILE] [--moto-port PORT]
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import boto3
import botocore
from botocore.config import Config


def client(endpoint):
    return boto3.client(
        "servicediscovery",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        # DiscoverInstances is served on data-<host> in AWS; a local endpoint has no such name.
        config=Config(inject_host_prefix=False, retries={"max_attempts": 1}),
    )


class Run:
    """One server's run through the cases: its client and the ids it handed out."""

    def __init__(self, endpoint):
        self.c = client(endpoint)
        self.ids = {}

    def call(self, op, **kw):
        try:
            out = getattr(self.c, op)(**kw)
            out.pop("ResponseMetadata", None)
            return out, None
        except botocore.exceptions.ClientError as e:
            return None, e.response["Error"]["Code"]
        except AttributeError:
            return None, "<operation missing in client>"

    def ok(self, op, **kw):
        out, err = self.call(op, **kw)
        return {"error": err} if err else out

    def result(self, op, **kw):
        """What a call did, as a comparable view: ok or its error code."""
        out, err = self.call(op, **kw)
        return {"error": err} if err else "ok"

    def ns_from_op(self, op_id):
        out, err = self.call("get_operation", OperationId=op_id)
        if err:
            return None
        return out["Operation"].get("Targets", {}).get("NAMESPACE")


def instance_ids(out):
    if not isinstance(out, dict) or "Instances" not in out:
        return out
    return sorted(i.get("InstanceId") or i.get("Id") for i in out["Instances"])


def names(out, key):
    if not isinstance(out, dict) or key not in out:
        return out
    return sorted(x["Name"] for x in out[key])


def cases():
    """(name, function(run) -> view). Cases run in order; later ones use ids earlier ones saved."""
    c = []

    def case(fn):
        c.append((fn.__name__, fn))
        return fn

    @case
    def create_http_namespace(r):
        out = r.ok("create_http_namespace", Name="compat-http", Description="first")
        r.ids["op"] = out.get("OperationId")
        return {"has_operation_id": bool(out.get("OperationId"))}

    @case
    def get_operation_create_namespace(r):
        out = r.ok("get_operation", OperationId=r.ids["op"])
        op = out.get("Operation", {})
        r.ids["http"] = op.get("Targets", {}).get("NAMESPACE")
        return {"Status": op.get("Status"), "Type": op.get("Type"), "Targets": sorted(op.get("Targets", {}))}

    @case
    def get_namespace_http(r):
        ns = r.ok("get_namespace", Id=r.ids["http"]).get("Namespace", {})
        return {
            "Name": ns.get("Name"),
            "Type": ns.get("Type"),
            "Description": ns.get("Description"),
            "ServiceCount": ns.get("ServiceCount"),
            "HttpName": ns.get("Properties", {}).get("HttpProperties", {}).get("HttpName"),
            "id_prefix": (ns.get("Id") or "")[:3],
            "arn_ok": (ns.get("Arn") or "").endswith(":namespace/" + str(ns.get("Id"))),
        }

    @case
    def create_namespace_duplicate_name(r):
        return r.result("create_http_namespace", Name="compat-http")

    @case
    def create_namespace_invalid_name(r):
        return r.result("create_http_namespace", Name="arn:not-allowed")

    @case
    def create_private_dns_namespace(r):
        out = r.ok("create_private_dns_namespace", Name="compat.internal", Vpc="vpc-1",
                   Properties={"DnsProperties": {"SOA": {"TTL": 60}}})
        r.ids["private"] = r.ns_from_op(out.get("OperationId"))
        ns = r.ok("get_namespace", Id=r.ids["private"]).get("Namespace", {})
        dns = ns.get("Properties", {}).get("DnsProperties", {})
        return {"Type": ns.get("Type"), "hosted_zone": bool(dns.get("HostedZoneId")), "SOA": dns.get("SOA")}

    @case
    def create_public_dns_namespace(r):
        out = r.ok("create_public_dns_namespace", Name="compat.example.com")
        r.ids["public"] = r.ns_from_op(out.get("OperationId"))
        ns = r.ok("get_namespace", Id=r.ids["public"]).get("Namespace", {})
        return {"Type": ns.get("Type"), "Name": ns.get("Name")}

    @case
    def list_namespaces(r):
        return names(r.ok("list_namespaces"), "Namespaces")

    @case
    def list_namespaces_filter_type(r):
        return names(r.ok("list_namespaces", Filters=[{"Name": "TYPE", "Values": ["DNS_PRIVATE"], "Condition": "EQ"}]), "Namespaces")

    @case
    def list_namespaces_filter_name_begins_with(r):
        return names(r.ok("list_namespaces", Filters=[{"Name": "NAME", "Values": ["compat."], "Condition": "BEGINS_WITH"}]), "Namespaces")

    @case
    def list_namespaces_paginated(r):
        out = r.ok("list_namespaces", MaxResults=1)
        return {"count": len(out.get("Namespaces", [])), "has_next_token": "NextToken" in out}

    @case
    def get_namespace_unknown(r):
        return r.result("get_namespace", Id="ns-0000000000000000")

    @case
    def update_http_namespace(r):
        res = r.result("update_http_namespace", Id=r.ids["http"], Namespace={"Description": "second"})
        ns = r.ok("get_namespace", Id=r.ids["http"]).get("Namespace", {})
        return {"result": res, "Description": ns.get("Description")}

    @case
    def create_service_custom_health(r):
        out = r.ok("create_service", Name="web", NamespaceId=r.ids["http"],
                   HealthCheckCustomConfig={"FailureThreshold": 1})
        svc = out.get("Service", {})
        r.ids["web"] = svc.get("Id")
        return {"Name": svc.get("Name"), "Type": svc.get("Type"), "InstanceCount": svc.get("InstanceCount"),
                "HealthCheckCustomConfig": svc.get("HealthCheckCustomConfig"), "id_prefix": (svc.get("Id") or "")[:4]}

    @case
    def create_service_duplicate(r):
        return r.result("create_service", Name="web", NamespaceId=r.ids["http"])

    @case
    def create_service_unknown_namespace(r):
        return r.result("create_service", Name="x", NamespaceId="ns-0000000000000000")

    @case
    def create_service_dns(r):
        out = r.ok("create_service", Name="api", NamespaceId=r.ids["private"],
                   DnsConfig={"RoutingPolicy": "MULTIVALUE", "DnsRecords": [{"Type": "A", "TTL": 10}, {"Type": "SRV", "TTL": 10}]})
        svc = out.get("Service", {})
        r.ids["api"] = svc.get("Id")
        dns = svc.get("DnsConfig", {})
        return {"Type": svc.get("Type"), "RoutingPolicy": dns.get("RoutingPolicy"), "DnsRecords": dns.get("DnsRecords")}

    @case
    def create_service_dns_namespace_without_dns_config(r):
        return r.result("create_service", Name="nodns", NamespaceId=r.ids["private"])

    @case
    def create_service_plain(r):
        out = r.ok("create_service", Name="plain", NamespaceId=r.ids["http"])
        r.ids["plain"] = out.get("Service", {}).get("Id")
        return {"Type": out.get("Service", {}).get("Type")}

    @case
    def get_service(r):
        svc = r.ok("get_service", Id=r.ids["web"]).get("Service", {})
        return {"Name": svc.get("Name"), "NamespaceId_matches": svc.get("NamespaceId") == r.ids["http"]}

    @case
    def get_service_unknown(r):
        return r.result("get_service", Id="srv-0000000000000000")

    @case
    def list_services(r):
        return names(r.ok("list_services"), "Services")

    @case
    def list_services_filter_namespace(r):
        return names(r.ok("list_services", Filters=[{"Name": "NAMESPACE_ID", "Values": [r.ids["private"]], "Condition": "EQ"}]), "Services")

    @case
    def register_instances(r):
        results = []
        for iid, ip, ver, az in [("web-1", "10.0.0.11", "v1", "use1-az1"), ("web-2", "10.0.0.12", "v2", "use1-az2")]:
            out = r.ok("register_instance", ServiceId=r.ids["web"], InstanceId=iid,
                       Attributes={"AWS_INSTANCE_IPV4": ip, "AWS_INSTANCE_PORT": "8080", "version": ver, "az": az})
            results.append(bool(out.get("OperationId")))
            r.ids["reg_op"] = out.get("OperationId")
        return results

    @case
    def get_operation_register(r):
        op = r.ok("get_operation", OperationId=r.ids["reg_op"]).get("Operation", {})
        return {"Status": op.get("Status"), "Type": op.get("Type"), "Targets": sorted(op.get("Targets", {}))}

    @case
    def list_instances(r):
        out = r.ok("list_instances", ServiceId=r.ids["web"])
        return {"ids": instance_ids(out), "attrs": [i.get("Attributes") for i in out.get("Instances", [])]}

    @case
    def get_instance(r):
        return r.ok("get_instance", ServiceId=r.ids["web"], InstanceId="web-2").get("Instance", {}).get("Attributes")

    @case
    def get_instance_unknown(r):
        return r.result("get_instance", ServiceId=r.ids["web"], InstanceId="nope")

    @case
    def get_instances_health_status(r):
        return r.ok("get_instances_health_status", ServiceId=r.ids["web"]).get("Status")

    def discover(r, **kw):
        return instance_ids(r.ok("discover_instances", NamespaceName="compat-http", ServiceName="web", **kw))

    @case
    def discover_healthy(r):
        return discover(r, HealthStatus="HEALTHY")

    @case
    def discover_query_parameters(r):
        return discover(r, HealthStatus="ALL", QueryParameters={"version": "v2"})

    @case
    def discover_optional_parameters_matching(r):
        return discover(r, HealthStatus="ALL", OptionalParameters={"az": "use1-az1"})

    @case
    def discover_optional_parameters_not_matching(r):
        return discover(r, HealthStatus="ALL", OptionalParameters={"az": "nowhere"})

    @case
    def discover_max_results(r):
        return len(discover(r, HealthStatus="ALL", MaxResults=1))

    @case
    def discover_summary_shape(r):
        out = r.ok("discover_instances", NamespaceName="compat-http", ServiceName="web", QueryParameters={"version": "v1"})
        i = (out.get("Instances") or [{}])[0]
        return {"keys": sorted(i), "HealthStatus": i.get("HealthStatus"), "NamespaceName": i.get("NamespaceName"),
                "has_revision": "InstancesRevision" in out}

    @case
    def discover_unknown_service(r):
        return r.result("discover_instances", NamespaceName="compat-http", ServiceName="nope")

    @case
    def discover_unknown_namespace(r):
        return r.result("discover_instances", NamespaceName="nope", ServiceName="web")

    @case
    def custom_health_unhealthy(r):
        before = r.ok("discover_instances_revision", NamespaceName="compat-http", ServiceName="web").get("InstancesRevision")
        res = r.result("update_instance_custom_health_status", ServiceId=r.ids["web"], InstanceId="web-1", Status="UNHEALTHY")
        after = r.ok("discover_instances_revision", NamespaceName="compat-http", ServiceName="web").get("InstancesRevision")
        return {"result": res, "revision_unchanged": before == after,
                "HEALTHY": discover(r, HealthStatus="HEALTHY"), "UNHEALTHY": discover(r, HealthStatus="UNHEALTHY"),
                "ALL": discover(r, HealthStatus="ALL"), "HEALTHY_OR_ELSE_ALL": discover(r, HealthStatus="HEALTHY_OR_ELSE_ALL")}

    @case
    def discover_default_health_status(r):
        return discover(r)

    @case
    def custom_health_all_unhealthy_fails_open(r):
        r.result("update_instance_custom_health_status", ServiceId=r.ids["web"], InstanceId="web-2", Status="UNHEALTHY")
        view = {"HEALTHY": discover(r, HealthStatus="HEALTHY"), "HEALTHY_OR_ELSE_ALL": discover(r, HealthStatus="HEALTHY_OR_ELSE_ALL")}
        for iid in ["web-1", "web-2"]:
            r.result("update_instance_custom_health_status", ServiceId=r.ids["web"], InstanceId=iid, Status="HEALTHY")
        return view

    @case
    def custom_health_without_custom_config(r):
        r.ok("register_instance", ServiceId=r.ids["plain"], InstanceId="p-1", Attributes={"AWS_INSTANCE_IPV4": "10.1.0.1"})
        return r.result("update_instance_custom_health_status", ServiceId=r.ids["plain"], InstanceId="p-1", Status="UNHEALTHY")

    @case
    def health_filter_ignored_without_health_check(r):
        out = r.ok("discover_instances", NamespaceName="compat-http", ServiceName="plain", HealthStatus="UNHEALTHY")
        return {"ids": instance_ids(out), "HealthStatus": [i.get("HealthStatus") for i in out.get("Instances", [])]}

    @case
    def revision_moves_on_register_and_deregister(r):
        rev = lambda: r.ok("discover_instances_revision", NamespaceName="compat-http", ServiceName="web").get("InstancesRevision")
        r0 = rev()
        same = rev()
        r.ok("register_instance", ServiceId=r.ids["web"], InstanceId="web-3", Attributes={"AWS_INSTANCE_IPV4": "10.0.0.13"})
        r1 = rev()
        r.ok("deregister_instance", ServiceId=r.ids["web"], InstanceId="web-3")
        r2 = rev()
        return {"stable_without_change": r0 == same, "moved_on_register": r1 != r0, "moved_on_deregister": r2 != r1,
                "never_repeats": len({r0, r1, r2}) == 3}

    @case
    def reregister_updates_in_place(r):
        r.ok("register_instance", ServiceId=r.ids["web"], InstanceId="web-1",
             Attributes={"AWS_INSTANCE_IPV4": "10.0.0.21", "AWS_INSTANCE_PORT": "8080", "version": "v1", "az": "use1-az1"})
        out = r.ok("list_instances", ServiceId=r.ids["web"])
        return {"ids": instance_ids(out)}

    @case
    def register_invalid_ipv4(r):
        return r.result("register_instance", ServiceId=r.ids["web"], InstanceId="bad", Attributes={"AWS_INSTANCE_IPV4": "10.0.0.300"})

    @case
    def register_too_many_custom_attributes(r):
        attrs = {f"k{i}": "v" for i in range(31)}
        return r.result("register_instance", ServiceId=r.ids["web"], InstanceId="many", Attributes=attrs)

    @case
    def register_missing_required_record_attribute(r):
        return r.result("register_instance", ServiceId=r.ids["api"], InstanceId="a-1", Attributes={"AWS_INSTANCE_PORT": "80"})

    @case
    def register_unknown_service(r):
        return r.result("register_instance", ServiceId="srv-0000000000000000", InstanceId="x", Attributes={"k": "v"})

    @case
    def deregister_unknown_instance(r):
        return r.result("deregister_instance", ServiceId=r.ids["web"], InstanceId="nope")

    @case
    def get_operation_unknown(r):
        return r.result("get_operation", OperationId="nope")

    @case
    def list_operations_filter_type(r):
        out = r.ok("list_operations", Filters=[{"Name": "TYPE", "Values": ["CREATE_NAMESPACE"], "Condition": "EQ"}])
        return len(out.get("Operations", [])) if "Operations" in out else out

    @case
    def list_operations_paginated(r):
        out = r.ok("list_operations", MaxResults=2)
        return {"count": len(out.get("Operations", [])), "has_next_token": "NextToken" in out}

    @case
    def update_service_ttl(r):
        res = r.result("update_service", Id=r.ids["api"],
                       Service={"DnsConfig": {"DnsRecords": [{"Type": "A", "TTL": 30}, {"Type": "SRV", "TTL": 30}]}})
        svc = r.ok("get_service", Id=r.ids["api"]).get("Service", {})
        return {"result": res, "ttls": [d.get("TTL") for d in svc.get("DnsConfig", {}).get("DnsRecords", [])]}

    @case
    def tags(r):
        arn = r.ok("get_namespace", Id=r.ids["http"]).get("Namespace", {}).get("Arn")
        r.ids["arn"] = arn
        r.result("tag_resource", ResourceARN=arn, Tags=[{"Key": "team", "Value": "core"}, {"Key": "env", "Value": "dev"}])
        listed = r.ok("list_tags_for_resource", ResourceARN=arn).get("Tags")
        r.result("untag_resource", ResourceARN=arn, TagKeys=["env"])
        after = r.ok("list_tags_for_resource", ResourceARN=arn).get("Tags")
        return {"listed": sorted(t["Key"] for t in listed or []), "after_untag": sorted(t["Key"] for t in after or [])}

    @case
    def tag_unknown_resource(r):
        arn = r.ids["arn"].rsplit("/", 1)[0] + "/ns-0000000000000000"
        return r.result("list_tags_for_resource", ResourceARN=arn)

    @case
    def service_attributes(r):
        up = r.result("update_service_attributes", ServiceId=r.ids["web"], Attributes={"team": "core", "tier": "1"})
        got = r.ok("get_service_attributes", ServiceId=r.ids["web"])
        dl = r.result("delete_service_attributes", ServiceId=r.ids["web"], Attributes=["tier"])
        after = r.ok("get_service_attributes", ServiceId=r.ids["web"])
        attrs = lambda o: o.get("ServiceAttributes", {}).get("Attributes") if "ServiceAttributes" in o else o
        return {"update": up, "get": attrs(got), "delete": dl, "after": attrs(after)}

    @case
    def delete_service_with_instances(r):
        svc = r.ok("create_service", Name="busy", NamespaceId=r.ids["http"]).get("Service", {}).get("Id")
        r.ok("register_instance", ServiceId=svc, InstanceId="b-1", Attributes={"k": "v"})
        view = r.result("delete_service", Id=svc)
        # Tidy up either way, so later cases see the same state on both servers.
        r.call("deregister_instance", ServiceId=svc, InstanceId="b-1")
        r.call("delete_service", Id=svc)
        return view

    @case
    def delete_namespace_with_services(r):
        ns = r.ns_from_op(r.ok("create_http_namespace", Name="compat-busy").get("OperationId"))
        svc = r.ok("create_service", Name="s", NamespaceId=ns).get("Service", {}).get("Id")
        view = r.result("delete_namespace", Id=ns)
        r.call("delete_service", Id=svc)
        r.call("delete_namespace", Id=ns)
        return view

    @case
    def cleanup(r):
        results = []
        for svc in ["web", "plain", "api"]:
            for i in r.ok("list_instances", ServiceId=r.ids[svc]).get("Instances", []):
                results.append(r.result("deregister_instance", ServiceId=r.ids[svc], InstanceId=i["Id"]))
            results.append(r.result("delete_service", Id=r.ids[svc]))
        for ns in ["http", "private", "public"]:
            results.append(r.result("delete_namespace", Id=r.ids[ns]))
        return sorted(set(json.dumps(x) for x in results))

    return c


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(port):
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("moto server exited at start")
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--expected", default=os.path.join(os.path.dirname(__file__), "expected_differences.json"))
    ap.add_argument("--moto-port", type=int, default=0)
    args = ap.parse_args()

    port = args.moto_port or free_port()
    moto = start_moto(port)
    try:
        ours, theirs = Run(args.ours), Run(f"http://127.0.0.1:{port}")
        differences = {}
        for name, fn in cases():
            a, b = fn(ours), fn(theirs)
            if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
                differences[name] = (a, b)
    finally:
        moto.kill()
        moto.wait()

    with open(args.expected) as f:
        expected = {d["case"]: d["why"] for d in json.load(f)}
    unexpected = sorted(set(differences) - set(expected))
    vanished = sorted(set(expected) - set(differences))
    print(f"{len(cases())} cases; {len(differences)} differ from moto ({len(expected)} expected)")
    for name, (a, b) in differences.items():
        tag = "expected" if name in expected else "UNEXPECTED"
        print(f"[{tag}] {name}\n    cloudmap-dns: {json.dumps(a, default=str)}\n    moto:         {json.dumps(b, default=str)}")
        if name in expected:
            print(f"    why: {expected[name]}")
    for name in vanished:
        print(f"[VANISHED] {name}: listed as a difference, but both now agree; take it off the list")
    if unexpected or vanished:
        print(f"FAIL: {len(unexpected)} unexpected, {len(vanished)} vanished")
        return 1
    print("OK: every difference is a listed, documented moto departure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
