"""moto's server with IAM enforcement on, for the least-privilege policy test (tests/packaging.rs).

Sets up, unauthenticated: a user holding conf/iam-policy.json, one holding nothing, one per
action holding the policy without that action, and a namespace `lab` with service `web` and one
instance. Then turns enforcement on and checks, with
boto3, that the policy holder is denied every write and every read the aws backend does not
make, and that the user without the policy is denied what the backend does make (so enforcement
is really on). Prints one JSON line (the endpoint and every user's keys) and keeps moto
running until stdin closes.
"""

import argparse
import json
import os
import sys
import urllib.request

import boto3
import botocore.config
import botocore.exceptions

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "compat"))
from compat import free_port, start_moto  # noqa: E402


def client(service, endpoint, key="test", secret="test"):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=botocore.config.Config(inject_host_prefix=False, retries={"max_attempts": 1}),
    )


def denied(call):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        # moto answers JSON services' denials in XML, which botocore reads as code "403".
        code = e.response["Error"]["Code"]
        if code in ("AccessDenied", "AccessDeniedException") or "<Code>AccessDenied</Code>" in str(e):
            return True
        raise SystemExit(f"expected AccessDenied, got {code}: {e}")
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", required=True)
    args = ap.parse_args()
    port = free_port()
    moto = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        iam = client("iam", endpoint)
        keys = {}
        policy = json.load(open(args.policy))
        users = [("cloudmap-dns", json.dumps(policy)), ("nobody", None)]
        # One user per action, holding the policy without it: each must be needed.
        for action in [a for st in policy["Statement"] for a in st["Action"]]:
            reduced = json.loads(json.dumps(policy))
            for st in reduced["Statement"]:
                st["Action"] = [a for a in st["Action"] if a != action]
            reduced["Statement"] = [st for st in reduced["Statement"] if st["Action"]]
            users.append((f"without-{action.split(':')[1]}", json.dumps(reduced)))
        for user, policy in users:
            iam.create_user(UserName=user)
            if policy:
                iam.put_user_policy(UserName=user, PolicyName="cloudmap-dns", PolicyDocument=policy)
            k = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        sd = client("servicediscovery", endpoint)
        sd.create_http_namespace(Name="lab")
        ns = sd.list_namespaces()["Namespaces"][0]["Id"]
        svc = sd.create_service(Name="web", NamespaceId=ns)["Service"]["Id"]
        sd.register_instance(ServiceId=svc, InstanceId="w1", Attributes={"AWS_INSTANCE_IPV4": "10.0.0.1"})

        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req).read()

        ours = client("servicediscovery", endpoint, *keys["cloudmap-dns"])
        found = ours.discover_instances(NamespaceName="lab", ServiceName="web")["Instances"]
        assert [i["InstanceId"] for i in found] == ["w1"], found
        not_needed = {
            "RegisterInstance": lambda: ours.register_instance(
                ServiceId=svc, InstanceId="x", Attributes={"AWS_INSTANCE_IPV4": "10.0.0.9"}),
            "DeregisterInstance": lambda: ours.deregister_instance(ServiceId=svc, InstanceId="w1"),
            "CreateHttpNamespace": lambda: ours.create_http_namespace(Name="other"),
            "DeleteService": lambda: ours.delete_service(Id=svc),
            "GetInstance": lambda: ours.get_instance(ServiceId=svc, InstanceId="w1"),
            "ListInstances": lambda: ours.list_instances(ServiceId=svc),
            "GetNamespace": lambda: ours.get_namespace(Id=ns),
            "UpdateInstanceCustomHealthStatus": lambda: ours.update_instance_custom_health_status(
                ServiceId=svc, InstanceId="w1", Status="UNHEALTHY"),
        }
        allowed = [name for name, call in not_needed.items() if not denied(call)]
        assert not allowed, f"the policy allows what the backend does not need: {allowed}"
        nobody = client("servicediscovery", endpoint, *keys["nobody"])
        assert denied(lambda: nobody.discover_instances(NamespaceName="lab", ServiceName="web")), \
            "IAM enforcement is off"
        assert denied(lambda: nobody.list_namespaces()), "IAM enforcement is off"

        print(json.dumps({"endpoint": endpoint, "keys": keys}), flush=True)
        sys.stdin.read()
    finally:
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    main()
