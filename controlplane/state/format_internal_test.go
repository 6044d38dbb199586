package state

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/straitmesh/strait/controlplane/api/apipb"
	"github.com/straitmesh/strait/controlplane/state/statepb"
)

// The state format's decisions about the API's messages. Each API message
// the state stores has a state message that mirrors it (mirrored); each
// field of it is in the state message, with the same number, name and
// type, or is listed in notPersisted with the reason. A field the API adds
// fails TestFormatDecidesEveryAPIField until it is decided here (and in
// statepb/state.proto), so an API change can neither change the log's
// format nor silently drop data from it.
var (
	mirrored = []struct {
		api, state proto.Message
		// The conversions; nil for a message converted only as a part of
		// another one.
		toState, toAPI func(proto.Message) proto.Message
	}{
		{&apipb.Service{}, &statepb.Service{}, conv(serviceToState), conv(serviceToAPI)},
		{&apipb.ServicePort{}, &statepb.ServicePort{}, nil, nil},
		{&apipb.Instance{}, &statepb.Instance{}, conv(instanceToState), conv(instanceToAPI)},
		{&apipb.ServiceKey{}, &statepb.ServiceKey{}, conv(serviceKeyToState), conv(serviceKeyToAPI)},
		{&apipb.InstanceKey{}, &statepb.InstanceKey{}, conv(instanceKeyToState), conv(instanceKeyToAPI)},
		{&apipb.RegisterRequest{}, &statepb.Register{}, conv(registerToState), conv(registerToAPI)},
		{&apipb.DeregisterRequest{}, &statepb.Deregister{}, conv(deregisterToState), conv(deregisterToAPI)},
		{&apipb.Change{}, &statepb.Change{}, conv(changeToState), conv(changeToAPI)},
		{&apipb.GatewaySet{}, &statepb.GatewaySet{}, conv(gatewaySetToState), conv(gatewaySetToAPI)},
		{&apipb.Token{}, &statepb.Token{}, conv(tokenToState), conv(tokenToAPI)},
		{&apipb.WorkloadEntry{}, &statepb.WorkloadEntry{}, conv(entryToState), conv(entryToAPI)},
		{&apipb.Selector{}, &statepb.Selector{}, nil, nil},
		{&apipb.Export{}, &statepb.Export{}, conv(exportToState), conv(exportToAPI)},
		{&apipb.Agent{}, &statepb.Agent{}, conv(agentToState), conv(agentToAPI)},
		{&apipb.GatewayRecord{}, &statepb.GatewayRecord{}, conv(gatewayToState), conv(gatewayToAPI)},
		{&apipb.Intention{}, &statepb.Intention{}, conv(intentionToState), conv(intentionToAPI)},
	}
	mirroredEnums = []struct{ api, state protoreflect.EnumDescriptor }{
		{apipb.Protocol(0).Descriptor(), statepb.Protocol(0).Descriptor()},
		{apipb.Health(0).Descriptor(), statepb.Health(0).Descriptor()},
		{apipb.TokenKind(0).Descriptor(), statepb.TokenKind(0).Descriptor()},
		{apipb.IntentionAction(0).Descriptor(), statepb.IntentionAction(0).Descriptor()},
	}
	// notPersisted: API fields the state does not store, by full name,
	// with the reason. Conversion drops them.
	notPersisted = map[protoreflect.FullName]string{}
	// stateOnly: fields of a mirroring state message that the API message
	// does not have, by full name, with the reason. Readers never see them.
	stateOnly = map[protoreflect.FullName]string{}
)

func conv[A, B proto.Message](f func(A) B) func(proto.Message) proto.Message {
	return func(m proto.Message) proto.Message { return f(m.(A)) }
}

func TestFormatDecidesEveryAPIField(t *testing.T) {
	msgPair := map[protoreflect.FullName]protoreflect.FullName{}
	for _, p := range mirrored {
		msgPair[p.api.ProtoReflect().Descriptor().FullName()] = p.state.ProtoReflect().Descriptor().FullName()
	}
	enumPair := map[protoreflect.FullName]protoreflect.FullName{}
	for _, p := range mirroredEnums {
		enumPair[p.api.FullName()] = p.state.FullName()
	}
	// sameType reports why two fields' types differ, or "".
	var sameType func(a, s protoreflect.FieldDescriptor) string
	sameType = func(a, s protoreflect.FieldDescriptor) string {
		switch {
		case a.Kind() != s.Kind():
			return fmt.Sprintf("kind %s, state %s", a.Kind(), s.Kind())
		case a.Cardinality() != s.Cardinality() || a.IsMap() != s.IsMap():
			return "cardinality differs"
		case (a.ContainingOneof() == nil) != (s.ContainingOneof() == nil):
			return "one is in a oneof, the other not"
		case a.IsMap():
			if why := sameType(a.MapKey(), s.MapKey()); why != "" {
				return "map key: " + why
			}
			return sameType(a.MapValue(), s.MapValue())
		case a.Kind() == protoreflect.MessageKind || a.Kind() == protoreflect.GroupKind:
			an, sn := a.Message().FullName(), s.Message().FullName()
			if an != sn && msgPair[an] != sn {
				return fmt.Sprintf("message %s, state %s (not a mirrored pair)", an, sn)
			}
		case a.Kind() == protoreflect.EnumKind:
			if an, sn := a.Enum().FullName(), s.Enum().FullName(); an != sn && enumPair[an] != sn {
				return fmt.Sprintf("enum %s, state %s (not a mirrored pair)", an, sn)
			}
		}
		return ""
	}
	const how = "mirror it in controlplane/state/statepb/state.proto (same number, name and type) and regenerate, or list it in notPersisted"
	for _, p := range mirrored {
		ad, sd := p.api.ProtoReflect().Descriptor(), p.state.ProtoReflect().Descriptor()
		for i := 0; i < ad.Fields().Len(); i++ {
			a := ad.Fields().Get(i)
			s := sd.Fields().ByNumber(a.Number())
			if _, ok := notPersisted[a.FullName()]; ok {
				if s != nil {
					t.Errorf("%s is listed as not persisted, but %s has field %d (%s): conversion would carry it", a.FullName(), sd.FullName(), a.Number(), s.Name())
				}
				continue
			}
			if s == nil {
				t.Errorf("API field %s (%d) is not decided by the state format: %s", a.FullName(), a.Number(), how)
				continue
			}
			if s.Name() != a.Name() {
				t.Errorf("field %d is %s in the API, %s in the state format", a.Number(), a.FullName(), s.FullName())
			}
			if why := sameType(a, s); why != "" {
				t.Errorf("%s and %s differ: %s", a.FullName(), s.FullName(), why)
			}
		}
		for i := 0; i < sd.Fields().Len(); i++ {
			s := sd.Fields().Get(i)
			if ad.Fields().ByNumber(s.Number()) == nil {
				if _, ok := stateOnly[s.FullName()]; !ok {
					t.Errorf("state field %s has no API field %d: list it in stateOnly, with why readers need not see it", s.FullName(), s.Number())
				}
			}
		}
	}
	for _, p := range mirroredEnums {
		for i := 0; i < p.api.Values().Len(); i++ {
			v := p.api.Values().Get(i)
			if s := p.state.Values().ByNumber(v.Number()); s == nil || s.Name() != v.Name() {
				t.Errorf("API enum value %s (%d) is not in %s: %s", v.FullName(), v.Number(), p.state.FullName(), how)
			}
		}
		for i := 0; i < p.state.Values().Len(); i++ {
			if v := p.state.Values().Get(i); p.api.Values().ByNumber(v.Number()) == nil {
				t.Errorf("state enum value %s (%d) is not in %s", v.FullName(), v.Number(), p.api.FullName())
			}
		}
	}
}

// TestStateFormatImportsNoAPI: the log and snapshot messages are the
// state's own.
func TestStateFormatImportsNoAPI(t *testing.T) {
	imports := statepb.File_controlplane_state_statepb_state_proto.Imports()
	for i := 0; i < imports.Len(); i++ {
		if p := imports.Get(i).Path(); !strings.HasPrefix(p, "google/protobuf/") {
			t.Errorf("state.proto imports %s: the state format must not depend on another package's messages", p)
		}
	}
}

// fill sets every field of m to a value that is not the default; variant
// picks which field of each oneof is set.
func fill(m protoreflect.Message, variant, depth int) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if o := fd.ContainingOneof(); o != nil && o.Fields().Get(variant%o.Fields().Len()) != fd {
			continue
		}
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for j := range 2 {
				k := scalar(fd.MapKey(), j)
				if fd.MapValue().Kind() == protoreflect.MessageKind {
					v := mp.NewValue()
					fill(v.Message(), variant, depth+1)
					mp.Set(k.MapKey(), v)
				} else {
					mp.Set(k.MapKey(), scalar(fd.MapValue(), j))
				}
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			for j := range 2 {
				if fd.Kind() == protoreflect.MessageKind {
					v := l.NewElement()
					fill(v.Message(), variant, depth+1)
					l.Append(v)
				} else {
					l.Append(scalar(fd, j))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth < 4 {
				fill(m.Mutable(fd).Message(), variant, depth+1)
			}
		default:
			m.Set(fd, scalar(fd, 1))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor, j int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", fd.Name(), j))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{byte(j + 1)})
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vs := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vs.Get(vs.Len() - 1).Number())
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(j + 7))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(j + 7))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(j + 7))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(int64(j + 7))
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(j) + 0.5)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(j) + 0.5)
	}
	panic("no value for " + fd.Kind().String())
}

// TestConversionKeepsEveryPersistedField: an API message converted to the
// state format and back is unchanged, every field set (each oneof case in
// turn), but for the fields listed as not persisted.
func TestConversionKeepsEveryPersistedField(t *testing.T) {
	for _, p := range mirrored {
		if p.toState == nil {
			continue
		}
		d := p.api.ProtoReflect().Descriptor()
		variants := 1
		for i := 0; i < d.Oneofs().Len(); i++ {
			variants = max(variants, d.Oneofs().Get(i).Fields().Len())
		}
		for v := range variants {
			in := p.api.ProtoReflect().New()
			fill(in, v, 0)
			st := p.toState(in.Interface())
			// The state message holds the same data: its encoding reads
			// back as the API message.
			reread := p.api.ProtoReflect().New().Interface()
			if b, err := proto.Marshal(st); err != nil {
				t.Fatal(err)
			} else if err := proto.Unmarshal(b, reread); err != nil {
				t.Fatal(err)
			}
			back := p.toAPI(st)
			want := proto.Clone(in.Interface())
			dropNotPersisted(want.ProtoReflect())
			if !proto.Equal(back, want) || !proto.Equal(reread, want) {
				t.Errorf("%s (variant %d) changed through the state format:\n got  %v\n want %v", d.FullName(), v, back, want)
			}
		}
	}
}

func dropNotPersisted(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if _, ok := notPersisted[fd.FullName()]; ok {
			m.Clear(fd)
		} else if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() {
			dropNotPersisted(v.Message())
		}
		return true
	})
}
