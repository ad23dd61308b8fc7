// Validates Prometheus Operator objects (ServiceMonitor, PrometheusRule) against the
// operator's published CRD schemas, as packaged by @kubernetes-models/prometheus-operator.
// Reads a JSON list of objects on stdin; prints a JSON list of error strings (one per
// object, "" when valid). Run by tests/deploy/test_charts.py with NODE_PATH set to
// build/tools/node_modules (make deploy-tools).
const kinds = {
  ServiceMonitor: require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor").ServiceMonitor,
  PrometheusRule: require("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule").PrometheusRule,
};
let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map((obj) => {
    const Model = kinds[obj.kind];
    if (!Model) return `no model for kind ${obj.kind}`;
    if (obj.apiVersion !== "monitoring.coreos.com/v1") return `apiVersion ${obj.apiVersion}`;
    try {
      new Model(obj).validate();
      return "";
    } catch (e) {
      return e.message;
    }
  });
  process.stdout.write(JSON.stringify(out));
});
