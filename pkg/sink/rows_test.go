package sink

import "testing"

// Events land with their positions from their ids; a malformed id stops
// the writer rather than be guessed at.
func TestEventKey(t *testing.T) {
	k, err := eventKey("3-1234-7")
	if err != nil || k != (rowKey{3, 1234, 7}) {
		t.Fatalf("%+v %v", k, err)
	}
	for _, bad := range []string{"", "3-4", "a-1-2", "1-2-3-4", "70000-1-1"} {
		if _, err := eventKey(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestStatements(t *testing.T) {
	got := Statements("-- a comment\nCREATE TABLE a (x UInt8);\n\nCREATE TABLE b\n(\n  y String -- trailing\n);\nSELECT 1")
	if len(got) != 3 || got[0] != "CREATE TABLE a (x UInt8)" || got[2] != "SELECT 1" {
		t.Fatalf("%q", got)
	}
}

func TestMigrationsAreNumbered(t *testing.T) {
	ms, err := Migrations()
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		if m.Version != uint32(i+1) {
			t.Fatalf("migration %s has version %d, want %d: numbers must run 1, 2, 3...", m.Name, m.Version, i+1)
		}
	}
}
