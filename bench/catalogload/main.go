// Command catalogload registers services and instances through a site's
// API, for benchmarks: N services in namespace "bench", each with M
// instances with addresses 10.x.y.z. With -churn, it then changes the
// health of random instances at that rate for -duration (each change
// turns one instance critical or passing again). It reads STRAIT_ADDR,
// STRAIT_TOKEN and STRAIT_CA_FILE like the CLI.
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

	"github.com/straitmesh/strait/apiclient"
	"github.com/straitmesh/strait/controlplane/api/apipb"
)

func main() {
	services := flag.Int("services", 10000, "services to register")
	per := flag.Int("instances", 10, "instances per service")
	workers := flag.Int("workers", 64, "concurrent registrations")
	load := flag.Bool("load", true, "register the services first")
	churn := flag.Int("churn", 0, "health changes per second after loading")
	duration := flag.Duration("duration", 10*time.Second, "how long to churn")
	flag.Parse()
	cl, err := apiclient.Dial(apiclient.Config{Addr: os.Getenv("STRAIT_ADDR"), Token: os.Getenv("STRAIT_TOKEN"), CAFile: os.Getenv("STRAIT_CA_FILE")})
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	total := *services * *per
	if *load {
		register(cl, total, *per, *workers, *services)
	}
	if *churn > 0 {
		churnFor(cl, total, *per, *churn, *duration)
	}
}

func instance(i, per int, h apipb.Health) *apipb.RegisterRequest {
	return &apipb.RegisterRequest{
		Service:  &apipb.Service{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i/per)},
		Instance: &apipb.Instance{Id: fmt.Sprintf("i%d", i%per), Address: fmt.Sprintf("10.%d.%d.%d", byte(i>>16), byte(i>>8), byte(i)), Health: h},
	}
}

// churnFor flips the health of instances at rate per second: the first
// pass turns instances critical, the next passing again.
func churnFor(cl *apiclient.Client, total, per, rate int, d time.Duration) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(d)
	sem := make(chan struct{}, 64)
	var done, i atomic.Int64
	var carry float64
	for now := range tick.C {
		if now.After(end) {
			break
		}
		carry += float64(rate) / 100
		for ; carry >= 1; carry-- {
			k := int(i.Add(1) - 1)
			h := apipb.Health_HEALTH_CRITICAL
			if (k/total)%2 == 1 {
				h = apipb.Health_HEALTH_PASSING
			}
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				if _, err := cl.Catalog.Register(context.Background(), instance((k*7919)%total, per, h)); err != nil {
					log.Fatal(err)
				}
				done.Add(1)
			}()
		}
	}
	for range cap(sem) {
		sem <- struct{}{}
	}
	fmt.Fprintf(os.Stderr, "made %d health changes in %s\n", done.Load(), d)
}

func register(cl *apiclient.Client, total, per, workers, services int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < total; i = int(next.Add(1)) - 1 {
				if _, err := cl.Catalog.Register(context.Background(), instance(i, per, apipb.Health_HEALTH_PASSING)); err != nil {
					log.Fatal(err)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Fprintf(os.Stderr, "registered %d instances in %d services in %s\n", total, services, time.Since(start).Round(time.Millisecond))
}
