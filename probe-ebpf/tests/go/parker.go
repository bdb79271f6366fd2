// Test target for probe-ebpf's live tests.
//
//	parker workers  - 3 goroutines that park on channel receives; main wakes them every 50ms.
//	                  Prints "worker GOID" for each, then "ready".
//	parker bench    - GOMAXPROCS=1 unbuffered-channel ping-pong. For each line N read from stdin,
//	                  runs N round trips (2 parks + 2 readies each) and prints ns per round trip.
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func goid() uint64 {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	f := strings.Fields(string(buf[:n])) // "goroutine 18 [running]:"
	id, _ := strconv.ParseUint(f[1], 10, 64)
	return id
}

func workers() {
	const n = 3
	chans := make([]chan int, n)
	for i := range chans {
		c := make(chan int)
		chans[i] = c
		go func() {
			fmt.Printf("worker %d\n", goid())
			for range c {
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	fmt.Println("ready")
	for {
		for _, c := range chans {
			c <- 1
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func bench() {
	runtime.GOMAXPROCS(1)
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		n, err := strconv.Atoi(strings.TrimSpace(in.Text()))
		if err != nil || n <= 0 {
			continue
		}
		start := time.Now()
		for i := 0; i < n; i++ {
			ping <- i
			<-pong
		}
		fmt.Println(time.Since(start).Nanoseconds() / int64(n))
	}
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "bench" {
		bench()
		return
	}
	workers()
}
