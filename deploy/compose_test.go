package deploy

import (
	"flag"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"

	"github.com/cardmeter/cardmeter/pkg/api"
	"github.com/cardmeter/cardmeter/pkg/broker"
)

// docker-compose validates the file without a Docker engine. `make test`
// installs Debian's docker-compose (deploy/local/deps.sh).
func TestComposeFileIsValid(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose not found: run `make test`, which installs it (deploy/local/deps.sh)")
	}
	out, err := exec.Command(bin, "-f", "../docker-compose.yml", "config", "-q").CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose.yml is invalid: %v\n%s", err, out)
	}
	// and it really runs the services the README promises
	out, err = exec.Command(bin, "-f", "../docker-compose.yml", "config", "--services").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []string{"nats-1", "nats-2", "nats-3", "clickhouse", "ingest", "ingest-2", "projector", "projector-2", "clock", "sink", "sink-2", "notifier", "prometheus", "grafana"} {
		if !slices.Contains(strings.Split(strings.TrimSpace(string(out)), "\n"), svc) {
			t.Errorf("docker-compose.yml has no service %q (has: %s)", svc, out)
		}
	}
}

// The compose stack's NATS servers get every variable their config files
// name (a missing one stops the server at start), and each cardmeter
// service signs in with the password its NATS user has there.
func TestComposeNATSEnvironment(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatal("docker-compose not found: run `make test`, which installs it (deploy/local/deps.sh)")
	}
	out, err := exec.Command(bin, "-f", "../docker-compose.yml", "--profile", "actuator", "config").Output()
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &compose); err != nil {
		t.Fatal(err)
	}
	var named [][]string
	for _, conf := range []string{"nats/cluster.conf", "nats/users.conf"} {
		b, err := os.ReadFile(conf)
		if err != nil {
			t.Fatal(err)
		}
		named = append(named, regexp.MustCompile(`\$(CARDMETER_[A-Z_]+)`).FindAllStringSubmatch(string(b), -1)...)
	}
	servers, clients := 0, 0
	for name, svc := range compose.Services {
		if !strings.HasPrefix(svc.Image, "nats:") {
			continue
		}
		servers++
		for _, v := range named {
			if _, ok := svc.Environment[v[1]]; !ok {
				t.Errorf("service %s: the NATS config names $%s, which its environment lacks", name, v[1])
			}
		}
		for _, c := range compose.Services {
			user := c.Environment["CARDMETER_NATS_USER"]
			if user == "" {
				continue
			}
			clients++
			if want := svc.Environment["CARDMETER_NATS_"+strings.ToUpper(user)+"_PASSWORD"]; want == "" || c.Environment["CARDMETER_NATS_PASSWORD"] != want {
				t.Errorf("NATS user %s: %s has it with another password than the service using it", user, name)
			}
		}
	}
	if servers != 3 || clients == 0 {
		t.Fatalf("%d NATS servers, %d clients checked", servers, clients)
	}
}

var update = flag.Bool("update", false, "rewrite deploy/nats/users.conf from broker.RolePermissions")

// The compose stack's NATS users are the roles' least privilege, as the
// code defines it (broker.RolePermissions): users.conf is made from it and
// must not drift; and nats.conf, as the NATS server reads it, gives every
// role its user and nobody else a way in.
func TestNATSUsers(t *testing.T) {
	want := broker.UsersConf([]string{"subscriber"})
	if *update {
		if err := os.WriteFile("nats/users.conf", []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile("nats/users.conf")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatal("deploy/nats/users.conf differs from broker.RolePermissions: run go test ./deploy -run TestNATSUsers -update")
	}
	names := append([]string{broker.UserAdmin, broker.UserSubscriber}, broker.Roles...)
	for _, n := range names {
		t.Setenv("CARDMETER_NATS_"+strings.ToUpper(n)+"_PASSWORD", "pw-"+n)
	}
	t.Setenv("CARDMETER_NATS_SERVER_NAME", "nats-1")
	t.Setenv("CARDMETER_NATS_ROUTE_PASSWORD", "pw-route")
	for _, conf := range []string{"nats/nats.conf", "nats/cluster.conf"} {
		checkUsers(t, conf, names)
	}
}

func checkUsers(t *testing.T, conf string, names []string) {
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if opts.NoAuthUser != "" || len(opts.Users) != len(names) {
		t.Fatalf("%s: %d users (want %d), no-auth user %q", conf, len(opts.Users), len(names), opts.NoAuthUser)
	}
	if conf == "nats/cluster.conf" && (opts.Cluster.Password != "pw-route" || len(opts.Routes) != 3) {
		t.Errorf("%s: routes %v, route password set %v", conf, opts.Routes, opts.Cluster.Password != "")
	}
	for _, u := range opts.Users {
		var want *server.Permissions
		switch u.Username {
		case broker.UserAdmin:
		case broker.UserSubscriber:
			want = broker.SubscriberPermissions([]string{"subscriber"})
		default:
			want = broker.RolePermissions(u.Username)
		}
		if u.Password != "pw-"+u.Username {
			t.Errorf("%s: user %s: the password is not its environment variable's", conf, u.Username)
		}
		if !reflect.DeepEqual(u.Permissions, want) {
			t.Errorf("%s: user %s: permissions %+v (response %+v), want %+v (response %+v)", conf, u.Username, u.Permissions, u.Permissions.Response, want, want.Response)
		}
	}
}

// The example tokens file the compose stack mounts parses, account scopes
// included.
func TestTokensExampleParses(t *testing.T) {
	tokens, err := api.LoadTokens("tokens.example.txt")
	if err != nil {
		t.Fatal(err)
	}
	p, ok := tokens.Lookup("dev-acme-0123456789abcdef")
	if !ok || !p.May(api.ScopeRead, "acme") || p.May(api.ScopeRead, "other") {
		t.Fatalf("the account token: %+v", p)
	}
}

// Every role may write its reports to the status bucket (GET /v1/status
// would say it is not running otherwise), under its own name only.
func TestEveryRoleReportsItsStatus(t *testing.T) {
	for _, role := range broker.Roles {
		if role == broker.RoleRebuild {
			continue // a tool, not a running role
		}
		allow := broker.RolePermissions(role).Publish.Allow
		if !slices.Contains(allow, "$KV."+broker.BucketStatus+"."+role+".>") {
			t.Errorf("role %s may not write its status reports", role)
		}
		for _, a := range allow {
			if strings.HasPrefix(a, "$KV."+broker.BucketStatus+".") && a != "$KV."+broker.BucketStatus+"."+role+".>" {
				t.Errorf("role %s may write %s", role, a)
			}
		}
	}
}
