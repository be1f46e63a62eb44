"""Unit tests of conformance.py's pure parts (log parsing, selection, the SIG table).

Run from the repository root:  python3 -m unittest discover -s bench/conformance -v
or from this folder:           python3 -m unittest -v
"""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conformance as c  # noqa: E402

NAME = "[sig-network] Services should be able to change the type from ClusterIP to ExternalName [Conformance]"

FAILED_LOG = """# {name}
I1207 18:50:33.541659   14913 e2e.go:129] Starting e2e run "x" on Ginkgo node 1
{{"msg":"Test Suite starting","total":1,"completed":0,"skipped":0,"failed":0}}
STEP: Creating a kubernetes client
STEP: creating a service clusterip-service with the type=ClusterIP
Dec  7 18:50:45.739: FAIL: Unexpected error:
    <*errors.errorString | 0xc002d024b0>: {{
        s: "boom",
    }}
SSSS
------------------------------
\u2022 Failure [6.083 seconds]
[sig-network] Services
/src/k8s.io/kubernetes/test/e2e/network/framework.go:23
  should be able to change the type from ClusterIP to ExternalName [Conformance] [It]
  /src/k8s.io/kubernetes/test/e2e/framework/framework.go:629

  Dec  7 18:50:45.739: Unexpected error:
      <*errors.errorString | 0xc002d024b0>: {{
          s: "failed to update Service: spec.clusterIP: Forbidden",
      }}
      failed to update Service: spec.clusterIP: Forbidden
  occurred

  /src/k8s.io/kubernetes/test/e2e/network/service.go:1737
------------------------------
{{"msg":"FAILED {name}","total":1,"completed":0,"skipped":2316,"failed":1,"failures":["{name}"]}}
SSSSSSSSDec  7 18:50:48.690: INFO: Running AfterSuite actions on all nodes
{{"msg":"Test Suite completed","total":1,"completed":0,"skipped":5666,"failed":1,"failures":["{name}"]}}
--- FAIL: TestE2E (6.24s)
FAIL
""".format(name=NAME)

PASSED_LOG = """# [sig-storage] Secrets should be consumable from pods in volume [NodeConformance] [Conformance]
SSS
------------------------------
[sig-storage] Secrets
  should be consumable from pods in volume [NodeConformance] [Conformance]
  /src/test/e2e/framework/framework.go:629
STEP: Creating a kubernetes client
\u2022{"msg":"PASSED [sig-storage] Secrets should be consumable from pods in volume [NodeConformance] [Conformance]","total":1,"completed":1,"skipped":0,"failed":0}
SSS
Ran 1 of 5667 Specs in 12.001 seconds
SUCCESS! -- 1 Passed | 0 Failed | 0 Pending | 5666 Skipped
PASS
"""

EXPECT_LOG = """\u2022 Failure in Spec Setup (BeforeEach) [120.010 seconds]
[k8s.io] Pods
/src/test/e2e/framework/framework.go:624
  should get a host IP [NodeConformance] [Conformance] [BeforeEach]
  /src/test/e2e/framework/framework.go:629

  Timed out after 120.000s.
  Expected
      <bool>: false
  to be true

  /src/test/e2e/framework/pods.go:99
------------------------------
{"msg":"FAILED [k8s.io] Pods should get a host IP [NodeConformance] [Conformance]"}
"""


class ParsingTest(unittest.TestCase):
    def test_failed_log_reason_is_the_error_not_the_struct_dump(self):
        p = c.parse_test_log(FAILED_LOG.splitlines(True))
        self.assertEqual(p["status"], "failed")
        self.assertTrue(p["block"][0].startswith("\u2022 Failure"))
        self.assertEqual(p["reason"], "Unexpected error: failed to update Service: spec.clusterIP: Forbidden")
        self.assertEqual(p["last_step"], "creating a service clusterip-service with the type=ClusterIP")

    def test_passed_log_after_bullet_on_same_line(self):
        p = c.parse_test_log(PASSED_LOG.splitlines(True))
        self.assertEqual(p["status"], "passed")
        self.assertEqual(p["block"], [])
        self.assertEqual(c.classify(p, False, 0, 12.0), ("passed", ""))

    def test_multiline_expectation_is_joined(self):
        p = c.parse_test_log(EXPECT_LOG.splitlines(True))
        self.assertEqual(p["status"], "failed")
        self.assertEqual(p["reason"], "Timed out after 120.000s. Expected <bool>: false to be true")

    def test_timeout_and_missing_result(self):
        p = c.parse_test_log(["STEP: waiting for pod x\n", "Dec  7 18:50:45.739: INFO: still waiting\n",
                              "Received interrupt.  Running AfterSuite...\n", 'STEP: Destroying namespace "x-1"\n'])
        st, why = c.classify(p, True, -2, 720.4)
        self.assertEqual(st, "timeout")
        self.assertEqual(why, "timed out after 720s (last step: waiting for pod x)")
        st, why = c.classify(p, False, 1, 3.0, "flag provided but not defined: -foo")
        self.assertEqual(st, "error")
        self.assertIn("exit code 1", why)
        self.assertIn("flag provided but not defined", why)

    def test_explanation_before_unexpected_error_is_kept(self):
        block = ["\u2022 Failure [30.0 seconds]", "[sig-api-machinery] Aggregator", "/src/x.go:1",
                 "  should work [It]", "  /src/y.go:2", "",
                 "  Dec  7 19:01:02.003: deploying extension apiserver in namespace aggregator-628",
                 "  Unexpected error:", "      <*errors.errorString | 0xc0>: {", '          s: "not ready",',
                 "      }", "      not ready", "  occurred", "", "  /src/z.go:3"]
        self.assertEqual(c.summarize_failure(block), "deploying extension apiserver in namespace aggregator-628: not ready")

    def test_focus_matching_nothing_is_an_error(self):
        p = c.parse_test_log(["Will run 0 of 5667 specs\n", "SUCCESS! -- 0 Passed | 0 Failed\n", "PASS\n"])
        st, why = c.classify(p, False, 0, 1.0, "PASS")
        self.assertEqual(st, "error")
        self.assertIn("matched no test", why)

    def test_fail_line_is_the_fallback_reason(self):
        lines = ["Dec  7 18:50:45.739: FAIL: pod never became ready\n", '{"msg":"FAILED x"}\n']
        p = c.parse_test_log(lines)
        self.assertEqual((p["status"], p["reason"]), ("failed", "pod never became ready"))

    def test_list_from_dryrun_keeps_order_and_double_spaces(self):
        lines = ['SSS\n',
                 '\u2022{"msg":"PASSED [sig-cli] Kubectl client Kubectl expose should create services for rc  [Conformance]","total":2}\n',
                 'SSSS{"msg":"PASSED [k8s.io] Pods should get a host IP [NodeConformance] [Conformance]","total":2}\n',
                 '{"msg":"Test Suite completed","total":2}\n',
                 '{"msg":"PASSED [k8s.io] Pods should get a host IP [NodeConformance] [Conformance]"}\n']
        self.assertEqual(c.list_from_dryrun(lines), [
            "[sig-cli] Kubectl client Kubectl expose should create services for rc  [Conformance]",
            "[k8s.io] Pods should get a host IP [NodeConformance] [Conformance]"])


class SelectionTest(unittest.TestCase):
    def test_sig_of(self):
        self.assertEqual(c.sig_of(NAME), "sig-network")
        self.assertEqual(c.sig_of("[k8s.io] [sig-node] Events should be sent [Conformance]"), "sig-node")
        self.assertEqual(c.sig_of("[k8s.io] Pods should get a host IP [Conformance]"), "sig-node")
        self.assertEqual(c.sig_of("something [Conformance]"), "other")

    def test_go_regexp_quote_matches_exactly_the_name(self):
        import re
        q = c.go_regexp_quote(NAME) + "$"
        self.assertRegex("[Top Level] " + NAME, q)
        self.assertIsNone(re.search(q, NAME + " [Serial]"))
        self.assertEqual(c.go_regexp_quote("a.b[c]"), r"a\.b\[c\]")

    def test_select_and_order(self):
        tests = ["[sig-apps] A [Conformance]", "[sig-network] B [Conformance]", "[sig-storage] C [Serial] [Conformance]"]
        self.assertEqual(c.select_tests(tests, ["sig-(apps|storage)"], ["Serial"]), ["[sig-apps] A [Conformance]"])
        self.assertEqual(c.select_tests(tests), tests)
        self.assertEqual(c.order_tests(tests, ["sig-storage", "sig-network"]),
                         [tests[2], tests[1], tests[0]])
        # measured durations: longest first, after the unmeasured ones
        self.assertEqual(c.order_tests(tests, ["sig-storage"], {tests[0]: 5.0, tests[1]: 60.0}),
                         [tests[2], tests[1], tests[0]])
        self.assertEqual(c.order_tests(tests, [], {tests[2]: 1.0}), [tests[0], tests[1], tests[2]])


class ReportTest(unittest.TestCase):
    def test_summary_counts_per_sig(self):
        tests = ["[sig-apps] A", "[sig-apps] B", "[k8s.io] C", "[sig-network] D", "[sig-network] E"]
        results = {"[sig-apps] A": {"status": "passed"},
                   "[sig-apps] B": {"status": "timeout", "reason": "timed out after 720s", "seconds": 720},
                   "[k8s.io] C": {"status": "passed"},
                   "[sig-network] D": {"status": "failed", "reason": "boom"}}
        s = c.summarize(tests, results)
        self.assertEqual(list(s["by_sig"]), ["sig-apps", "sig-network", "sig-node"])
        self.assertEqual(s["by_sig"]["sig-apps"], {"passed": 1, "failed": 1, "not_run": 0, "total": 2})
        self.assertEqual(s["by_sig"]["sig-network"], {"passed": 0, "failed": 1, "not_run": 1, "total": 2})
        self.assertEqual(s["total"], {"passed": 2, "failed": 2, "not_run": 1, "total": 5})
        self.assertEqual(s["pass_rate"], 50.0)
        self.assertEqual([f["name"] for f in s["failed"]], ["[sig-apps] B", "[sig-network] D"])
        md = c.render_report(s)
        self.assertIn("| sig-apps | 1 | 1 | 0 | 2 |", md)
        self.assertIn("| **all** | **2** | **2** | 1 | 5 |", md)
        self.assertIn("- [sig-apps] B [timeout]\n  - timed out after 720s", md)
        self.assertIn("- [sig-network] D\n  - boom", md)

    def test_read_results_later_record_wins(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "results.jsonl")
            with open(p, "w") as f:
                f.write(json.dumps({"name": "a", "status": "failed"}) + "\n")
                f.write("not json\n")
                f.write(json.dumps({"name": "b", "status": "passed"}) + "\n")
                f.write(json.dumps({"name": "a", "status": "passed"}) + "\n")
            r = c.read_results(p)
            self.assertEqual(list(r), ["b", "a"])
            self.assertEqual(r["a"]["status"], "passed")

    def test_write_report_reads_a_run_folder(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "results", "tests"))
            with open(os.path.join(d, "tests.txt"), "w") as f:
                f.write(NAME + "\n[sig-storage] Secrets should be consumable from pods in volume [NodeConformance] [Conformance]\n")
            with open(os.path.join(d, "results", "tests", "000.log"), "w") as f:
                f.write(FAILED_LOG)
            with open(os.path.join(d, "results", "results.jsonl"), "w") as f:
                f.write(json.dumps({"name": NAME, "status": "failed", "seconds": 7.6, "log": "tests/000.log", "rc": 1}) + "\n")
            with open(os.devnull, "w") as null:
                old, sys.stdout = sys.stdout, null
                try:
                    s = c.write_report(d)
                finally:
                    sys.stdout = old
            self.assertEqual(s["total"], {"passed": 0, "failed": 1, "not_run": 1, "total": 2})
            self.assertEqual(s["failed"][0]["reason"], "Unexpected error: failed to update Service: spec.clusterIP: Forbidden")
            failures = c.read_text(os.path.join(d, "failures.txt"))
            self.assertIn("=== FAILED " + NAME, failures)
            self.assertIn("service.go:1737", failures)
            self.assertEqual(json.loads(c.read_text(os.path.join(d, "summary.json")))["total"]["failed"], 1)


class MiscTest(unittest.TestCase):
    def test_archive_name_and_duration(self):
        self.assertEqual(c.archive_name("k8s.gcr.io/e2e-test-images/agnhost:2.21"),
                         "k8s.gcr.io_e2e-test-images_agnhost_2.21.tar")
        self.assertEqual(c.fmt_secs(3723), "1h02m03s")
        self.assertEqual(c.fmt_secs(63), "1m03s")

    def test_archive_tags_reads_the_index(self):
        import io
        import tarfile
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "a.tar")
            index = {"manifests": [{"annotations": {"io.containerd.image.name": "docker.io/library/busybox:1.29"}},
                                   {"annotations": {}}]}
            data = json.dumps(index).encode()
            with tarfile.open(p, "w") as tf:
                ti = tarfile.TarInfo("index.json")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            self.assertEqual(c.archive_tags(p), ["docker.io/library/busybox:1.29"])
            with open(os.path.join(d, "b.tar"), "w") as f:
                f.write("not a tar")
            self.assertEqual(c.archive_tags(os.path.join(d, "b.tar")), [])

    def test_version_ldflags_cover_vendor_paths(self):
        ld = c.version_ldflags()
        self.assertIn("-X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.gitVersion=v1.20.2", ld)
        self.assertIn("-X k8s.io/component-base/version.gitMinor=20", ld)


if __name__ == "__main__":
    unittest.main()


class AgentsTest(unittest.TestCase):
    def test_agent_count_defaults_per_subcommand(self):
        self.assertEqual(c.agent_count("run", None), 0)
        self.assertEqual(c.agent_count("all", None), c.DEFAULT_AGENTS["all"])
        self.assertEqual(c.agent_count("all", 0), 0)
        self.assertEqual(c.agent_count("run", 2), 2)
        with self.assertRaises(SystemExit):
            c.agent_count("run", -1)
        with self.assertRaises(SystemExit):
            c.agent_count("run", 51)
        a = c.parser().parse_args(["run", "--agents", "3", "--agent-arg=--node-label=x=y"])
        self.assertEqual((a.agents, a.agent_arg), (3, ["--node-label=x=y"]))
        self.assertIsNone(c.parser().parse_args(["all"]).agents)

    def test_agent_networks_are_distinct_and_short(self):
        nets = [c.agent_network(i, 26543) for i in range(50)]
        for key in ("netns", "host_if", "host_ip", "ip", "name"):
            self.assertEqual(len({n[key] for n in nets}), 50, key)
        for n in nets:
            self.assertLessEqual(len(n["host_if"]), 15, n)  # IFNAMSIZ - 1
            self.assertEqual(n["host_ip"].rsplit(".", 1)[0], n["ip"].rsplit(".", 1)[0])
        self.assertEqual(nets[0]["host_ip"], "198.18.201.1")
        self.assertEqual(nets[0]["ip"], "198.18.201.2")
        self.assertNotEqual(c.agent_network(0, 26543)["netns"], c.agent_network(0, 26544)["netns"])
        with self.assertRaises(ValueError):
            c.agent_network(50, 26543)

    def test_network_setup_puts_the_node_ip_in_the_namespace(self):
        n = c.agent_network(1, 26543)
        cmds = [" ".join(x) for x in c.network_setup_cmds(n)]
        self.assertEqual(cmds[0], f"ip netns add {n['netns']}")
        self.assertIn(f"ip -n {n['netns']} addr add 198.18.202.2/24 dev eth0", cmds)
        self.assertIn(f"ip addr add 198.18.202.1/24 dev {n['host_if']}", cmds)
        self.assertEqual(cmds[-1], f"ip -n {n['netns']} route add default via 198.18.202.1")
        veth = next(x for x in cmds if " veth " in x)
        self.assertTrue(veth.endswith(f"peer name eth0 netns {n['netns']}"), veth)

    def test_rk3s_nft_tables(self):
        text = "table ip6 nat\ntable inet rk3s-proxy\ntable ip rk3s\ntable inet filter\n\n"
        self.assertEqual(c.rk3s_nft_tables(text), [("inet", "rk3s-proxy"), ("ip", "rk3s")])
        self.assertEqual(c.rk3s_nft_tables(""), [])

    def test_new_leftovers_ignore_what_was_there_but_not_our_own(self):
        before = ["host interface cni0", "nftables table ip rk3s-proxy", "network namespace rk3sconf-1-a0"]
        now = ["host interface cni0", "host interface flannel.1", "nftables table ip rk3s-proxy",
               "network namespace rk3sconf-1-a0", "host interface rk3scf1a0"]
        self.assertEqual(c.new_leftovers(now, before, ["rk3sconf-1-a0"], ["rk3scf1a0"]),
                         ["host interface flannel.1", "network namespace rk3sconf-1-a0", "host interface rk3scf1a0"])
        self.assertEqual(c.new_leftovers([], before, ["rk3sconf-1-a0"], []), [])
