// Command catalogload registers services and instances through a site's
// API, for benchmarks: N services in namespace "bench", each with M
// instances with addresses 10.x.y.z. It reads STRAIT_ADDR, STRAIT_TOKEN
// and STRAIT_CA_FILE like the CLI.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/apiclient"
)

func main() {
	services := flag.Int("services", 10000, "services to register")
	per := flag.Int("instances", 10, "instances per service")
	workers := flag.Int("workers", 64, "concurrent registrations")
	flag.Parse()
	cl, err := apiclient.Dial(apiclient.Config{Addr: os.Getenv("STRAIT_ADDR"), Token: os.Getenv("STRAIT_TOKEN"), CAFile: os.Getenv("STRAIT_CA_FILE")})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	total := *services * *per
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < total; i = int(next.Add(1)) - 1 {
				svc, inst := i / *per, i%*per
				_, err := cl.Catalog.Register(context.Background(), &apipb.RegisterRequest{
					Service:  &apipb.Service{Namespace: "bench", Name: fmt.Sprintf("svc-%d", svc)},
					Instance: &apipb.Instance{Id: fmt.Sprintf("i%d", inst), Address: fmt.Sprintf("10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i))},
				})
				if err != nil {
					log.Fatal(err)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Fprintf(os.Stderr, "registered %d instances in %d services in %s\n", total, *services, time.Since(start).Round(time.Millisecond))
}
