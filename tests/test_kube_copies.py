"""What an ephemeral environment's copy of a Deployment and a Service keeps of its source
(controller/runtimes/kubernetes/ephemeral_copies.py): nothing the API server set, nothing of
the source's own life, nothing a ClusterIP Service refuses."""

from __future__ import annotations

from controller.runtimes.kubernetes.ephemeral_copies import deployment_copy, service_copy


def test_a_load_balancer_service_becomes_a_plain_cluster_ip() -> None:
    source = {"metadata": {"name": "stg-api", "namespace": "staging", "uid": "u-1",
                           "resourceVersion": "42", "labels": {"app": "api"}},
              "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                       "allocateLoadBalancerNodePorts": True, "loadBalancerClass": "x/lb",
                       "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
                       "selector": {"app": "api"},
                       "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]},
              "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}}
    copied = service_copy(source, "api", "wakegate-pr-1-abcde")
    assert copied == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": "wakegate-pr-1-abcde", "labels": {"app": "api"}},
        "spec": {"type": "ClusterIP", "selector": {"app": "api"},
                 "ports": [{"port": 80, "targetPort": 8080}]},
    }
    assert source["spec"]["ports"][0]["nodePort"] == 30080, "the source is left as it is"


def test_a_deployment_copy_is_asleep_at_the_version_asked() -> None:
    source = {"metadata": {"name": "stg-api", "namespace": "staging", "uid": "u-2",
                           "annotations": {"wakegate.dev/service": "api",
                                           "wakegate.dev/version": "1.0.0",
                                           "wakegate.dev/last-activity": "2026-12-06T10:00:00Z",
                                           "deployment.kubernetes.io/revision": "3"}},
              "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}},
                       "template": {"metadata": {"labels": {"app": "api"}},
                                    "spec": {"containers": [{
                                        "name": "api", "image": "registry:5000/api:1.0.0-stg",
                                        "env": [{"name": "WAKEGATE_VERSION",
                                                 "value": "1.0.0"}]}]}}},
              "status": {"readyReplicas": 2}}
    copied = deployment_copy(source, "api", "wakegate-pr-1-abcde", "1.4.0")
    assert copied["metadata"] == {"name": "api", "namespace": "wakegate-pr-1-abcde",
                                  "annotations": {"wakegate.dev/service": "api",
                                                  "wakegate.dev/version": "1.4.0"}}
    assert "status" not in copied and copied["spec"]["replicas"] == 0
    container = copied["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry:5000/api:1.4.0", "no prefix in an ephemeral one"
    assert container["env"] == [{"name": "WAKEGATE_VERSION", "value": "1.4.0"}]
    assert copied["spec"]["selector"] == {"matchLabels": {"app": "api"}}
