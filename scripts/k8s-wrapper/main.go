// Command kube-apiserver is a thin wrapper around the upstream
// k8s.io/kubernetes/cmd/kube-apiserver/app package. It exists so that
// kube-apiserver can be built from Go modules alone (see
// scripts/build-k8s-binaries.sh); it mirrors upstream cmd/kube-apiserver.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
