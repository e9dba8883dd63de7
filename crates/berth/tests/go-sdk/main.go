// The AWS SDK for Go v2 — the SDK behind Terraform's AWS provider, and the strictest reader of
// AWS answers (timestamps must be JSON numbers; errors are read from X-Amzn-ErrorType) — against
// berth's ECR, Secrets Manager, App Runner and STS. Usage: go-sdk-check <endpoint>, with a berth
// access key in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and a region in AWS_REGION. Prints
// "go sdk ok" when every check passed; otherwise says which failed and exits 1.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/apprunner"
	artypes "github.com/aws/aws-sdk-go-v2/service/apprunner/types"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	ecrtypes "github.com/aws/aws-sdk-go-v2/service/ecr/types"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	smtypes "github.com/aws/aws-sdk-go-v2/service/secretsmanager/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
	os.Exit(1)
}

func check(ok bool, what string) {
	if !ok {
		fail(what, errors.New("check failed"))
	}
}

func main() {
	ctx := context.Background()
	endpoint := os.Args[1]
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fail("config", err)
	}

	// ECR: timestamps as epoch numbers, modeled errors.
	e := ecr.NewFromConfig(cfg, func(o *ecr.Options) { o.BaseEndpoint = aws.String(endpoint) })
	repo, err := e.CreateRepository(ctx, &ecr.CreateRepositoryInput{RepositoryName: aws.String("gosdk/web"), ImageTagMutability: ecrtypes.ImageTagMutabilityImmutable})
	if err != nil {
		fail("ecr create-repository", err)
	}
	check(repo.Repository.CreatedAt != nil && repo.Repository.CreatedAt.Year() >= 2024, "ecr createdAt is a time")
	check(repo.Repository.ImageTagMutability == ecrtypes.ImageTagMutabilityImmutable, "ecr mutability")
	_, err = e.DescribeRepositories(ctx, &ecr.DescribeRepositoriesInput{RepositoryNames: []string{"gosdk/nope"}})
	var noRepo *ecrtypes.RepositoryNotFoundException
	check(errors.As(err, &noRepo), fmt.Sprintf("ecr missing repository is RepositoryNotFoundException (got %v)", err))
	auth, err := e.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		fail("ecr get-authorization-token", err)
	}
	check(len(auth.AuthorizationData) == 1 && auth.AuthorizationData[0].ExpiresAt != nil, "ecr authorization data")

	// Secrets Manager.
	sm := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) { o.BaseEndpoint = aws.String(endpoint) })
	made, err := sm.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("gosdk/key"), SecretString: aws.String("s3cret")})
	if err != nil {
		fail("secretsmanager create-secret", err)
	}
	got, err := sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: made.ARN})
	if err != nil {
		fail("secretsmanager get-secret-value", err)
	}
	check(aws.ToString(got.SecretString) == "s3cret" && got.CreatedDate != nil, "secret value and date")
	check(aws.ToString(got.VersionId) == aws.ToString(made.VersionId), "the version made is the version read")
	desc, err := sm.DescribeSecret(ctx, &secretsmanager.DescribeSecretInput{SecretId: aws.String("gosdk/key")})
	if err != nil {
		fail("secretsmanager describe-secret", err)
	}
	check(desc.CreatedDate != nil && len(desc.VersionIdsToStages) == 1, "secret description")
	_, err = sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String("gosdk/nope")})
	var noSecret *smtypes.ResourceNotFoundException
	check(errors.As(err, &noSecret), fmt.Sprintf("missing secret is ResourceNotFoundException (got %v)", err))

	// App Runner: auto scaling configurations (lowercase statuses, as Terraform compares them).
	ar := apprunner.NewFromConfig(cfg, func(o *apprunner.Options) { o.BaseEndpoint = aws.String(endpoint) })
	asc, err := ar.CreateAutoScalingConfiguration(ctx, &apprunner.CreateAutoScalingConfigurationInput{
		AutoScalingConfigurationName: aws.String("gosdk"),
		MaxConcurrency:               aws.Int32(50),
		MaxSize:                      aws.Int32(4),
	})
	if err != nil {
		fail("apprunner create-auto-scaling-configuration", err)
	}
	a := asc.AutoScalingConfiguration
	check(string(a.Status) == "active" && a.CreatedAt != nil && aws.ToInt32(a.MaxConcurrency) == 50, "auto scaling configuration")
	listed, err := ar.ListAutoScalingConfigurations(ctx, &apprunner.ListAutoScalingConfigurationsInput{})
	if err != nil {
		fail("apprunner list-auto-scaling-configurations", err)
	}
	check(len(listed.AutoScalingConfigurationSummaryList) == 2, "two configurations: the default and gosdk")
	_, err = ar.DescribeService(ctx, &apprunner.DescribeServiceInput{ServiceArn: aws.String("arn:aws:apprunner:us-east-1:000000000000:service/nope/00000000000000000000000000000000")})
	// This server runs no containers, which the operation's own modeled error says.
	var invalid *artypes.InvalidRequestException
	check(errors.As(err, &invalid), fmt.Sprintf("a service call without the runtime is InvalidRequestException (got %v)", err))

	// STS.
	s := sts.NewFromConfig(cfg, func(o *sts.Options) { o.BaseEndpoint = aws.String(endpoint) })
	who, err := s.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fail("sts get-caller-identity", err)
	}
	check(aws.ToString(who.Account) == "000000000000", "sts account")
	fmt.Println("go sdk ok")
}
