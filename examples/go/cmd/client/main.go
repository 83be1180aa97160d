// Command client calls HelloService through the sidecar the classic way: one ClientConn with insecure
// credentials (plaintext h2c to localhost), a context.WithTimeout deadline per call, and status.Code to tell
// errors apart.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	hellov1 "example.com/hello/gen/hello/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "the sidecar")
	name := flag.String("name", "world", "who to greet")
	timeout := flag.Duration("timeout", 2*time.Second, "deadline of each call")
	count := flag.Int("n", 1, "calls to make over the one connection")
	flag.Parse()

	// Plaintext h2c to the local sidecar (Debian's grpc-go 1.33 predates credentials/insecure).
	conn, err := grpc.Dial(*addr, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	client := hellov1.NewHelloServiceClient(conn)

	failed := false
	for i := 0; i < *count; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		var header metadata.MD
		reply, err := client.SayHello(ctx, &hellov1.HelloRequest{Name: *name}, grpc.Header(&header))
		cancel()
		if err != nil {
			failed = true
			switch status.Code(err) {
			case codes.InvalidArgument:
				fmt.Println("InvalidArgument (bad request):", status.Convert(err).Message())
			case codes.Unavailable:
				fmt.Println("Unavailable (no backend):", status.Convert(err).Message())
			case codes.DeadlineExceeded:
				fmt.Println("DeadlineExceeded (too slow):", status.Convert(err).Message())
			default:
				fmt.Println(status.Code(err), status.Convert(err).Message())
			}
			continue
		}
		fmt.Printf("%s (code %d, pod %v)\n", reply.GetMessage(), reply.GetCode(), header.Get("x-hello-pod"))
	}
	if failed {
		os.Exit(1)
	}
}
