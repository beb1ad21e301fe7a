// Validates the ServiceMonitors in rendered manifests against the Prometheus Operator's
// schema (the @kubernetes-models/prometheus-operator package): kubernetes-validate knows
// only the core API. Arguments: rendered YAML files.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import yaml from "js-yaml";
import fs from "fs";

let invalid = 0;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (doc?.kind !== "ServiceMonitor") continue;
    checked++;
    try {
      new ServiceMonitor(doc).validate();
    } catch (e) {
      invalid++;
      console.error(`${file}: ServiceMonitor/${doc.metadata?.name}: ${e.message}`);
    }
  }
}
console.log(`${checked} ServiceMonitors checked, ${invalid} invalid`);
process.exit(invalid || !checked ? 1 : 0);
