// Command etcd is a thin wrapper around go.etcd.io/etcd/server/v3/etcdmain so
// that etcd can be built from Go modules alone (see
// scripts/build-k8s-binaries.sh). It mirrors upstream server/main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
