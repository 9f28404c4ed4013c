package card

import (
	"encoding/json"
	"reflect"
	"testing"
)

// diffStates logs the first card in which two whole states differ.
func diffStates(t *testing.T, a, b []byte) {
	t.Helper()
	var x, y snapshot
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		t.Log("a state does not decode")
		return
	}
	for i := range x.Cards {
		if !reflect.DeepEqual(x.Cards[i], y.Cards[i]) {
			t.Logf("card %d differs:\nwant %+v\ngot  %+v", i, x.Cards[i], y.Cards[i])
			return
		}
	}
	t.Logf("cards equal; head differs? %v", !reflect.DeepEqual(x.Accounts, y.Accounts))
}
